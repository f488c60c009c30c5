"""Training configuration: every hyperparameter of a run, validated on construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from robustlab.errors import RobustlabError
from robustlab.training.methods import METHODS

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine", "onecycle")


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RobustlabError(f"TrainConfig.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise RobustlabError(f"TrainConfig.{name} must be >= {minimum}, got {value}")


def _require_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RobustlabError(f"TrainConfig.{name} must be a finite number, got {value!r}")
    return float(value)


def _require_choice(name: str, value: object, choices) -> None:
    if value not in choices:
        raise RobustlabError(
            f"TrainConfig.{name} must be one of {sorted(choices)}, got {value!r}"
        )


@dataclass
class TrainConfig:
    """Hyperparameters of one training run.

    ``optimizer`` is ``"sgd"`` (with ``momentum`` and optional ``nesterov``) or ``"adam"``
    (``momentum`` is ignored; ``weight_decay`` is Adam's L2 penalty). The learning-rate
    ``schedule`` is stepped once per iteration, as a factor of ``lr``:

    - ``"constant"``: 1.
    - ``"step"``: multiplied by ``gamma`` at each of ``milestones``, given as fractions of the
      total number of iterations (0.5 = halfway through training).
    - ``"cosine"``: ``0.5 * (1 + cos(pi * t))`` with ``t`` the fraction of training done;
      from ``lr`` down to 0 (Loshchilov & Hutter, SGDR, 2017).
    - ``"onecycle"``: piecewise linear from 0 up to ``lr`` at 40% of training and back to 0
      at the end, the schedule of Wong et al., "Fast is better than free", 2020, Sec. 5.

    ``seed`` drives all randomness of the run (shuffling and, e.g., dropout), so two runs with
    the same seed give the same weights on CPU. ``method`` names a training method in
    :data:`robustlab.training.METHODS`.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    seed: int = 0
    method: str = "natural"

    def __post_init__(self) -> None:
        _require_int("epochs", self.epochs, 1)
        _require_int("batch_size", self.batch_size, 1)
        _require_int("seed", self.seed, 0)
        _require_choice("optimizer", self.optimizer, OPTIMIZERS)
        _require_choice("schedule", self.schedule, SCHEDULES)
        _require_choice("method", self.method, METHODS)
        self.lr = _require_float("lr", self.lr)
        if self.lr <= 0:
            raise RobustlabError(f"TrainConfig.lr must be > 0, got {self.lr}")
        self.momentum = _require_float("momentum", self.momentum)
        if not 0 <= self.momentum < 1:
            raise RobustlabError(f"TrainConfig.momentum must be in [0, 1), got {self.momentum}")
        self.weight_decay = _require_float("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise RobustlabError(
                f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}"
            )
        if not isinstance(self.nesterov, bool):
            raise RobustlabError(f"TrainConfig.nesterov must be a bool, got {self.nesterov!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise RobustlabError(
                "TrainConfig.nesterov=True needs optimizer='sgd' with momentum > 0"
            )
        self.gamma = _require_float("gamma", self.gamma)
        if not 0 < self.gamma <= 1:
            raise RobustlabError(f"TrainConfig.gamma must be in (0, 1], got {self.gamma}")
        self.milestones = self._checked_milestones(self.milestones)

    @staticmethod
    def _checked_milestones(milestones) -> tuple[float, ...]:
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise RobustlabError(
                f"TrainConfig.milestones must be a sequence of fractions, got {milestones!r}"
            )
        values = tuple(_require_float("milestones", m) for m in milestones)
        if any(not 0 < m < 1 for m in values):
            raise RobustlabError(
                "TrainConfig.milestones are fractions of the total number of epochs and must "
                f"lie strictly between 0 and 1, got {values}"
            )
        if any(b <= a for a, b in zip(values, values[1:])):
            raise RobustlabError(f"TrainConfig.milestones must be increasing, got {values}")
        return values

    def to_dict(self) -> dict:
        """Plain-Python form (safe to store in a checkpoint and to write as JSON)."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
