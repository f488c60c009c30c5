"""Training configuration: every hyperparameter of a run, validated on construction."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, fields

from robustlab.errors import RobustlabError
from robustlab.threat import NORMS, ThreatModel, threat_model
from robustlab.training.augment import AUGMENTATIONS
from robustlab.training.methods import BN_MODES, METHODS
from robustlab.validate import is_int, is_number

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine", "onecycle")


def _require_int(name: str, value: object, minimum: int) -> None:
    if not is_int(value):
        raise RobustlabError(f"TrainConfig.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise RobustlabError(f"TrainConfig.{name} must be >= {minimum}, got {value}")


def _require_float(name: str, value: object) -> float:
    if not is_number(value, finite=False) or not math.isfinite(value):
        raise RobustlabError(f"TrainConfig.{name} must be a finite number, got {value!r}")
    return float(value)


def _require_choice(name: str, value: object, choices, *, optional: bool = False) -> None:
    """``value`` must be one of ``choices`` (or None where ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, str) or value not in choices:
        raise RobustlabError(
            f"TrainConfig.{name} must be one of {sorted(choices)}{' or None' if optional else ''}, got {value!r}"
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

    ``seed`` drives all randomness of the run (shuffling, dropout, the methods' random starts),
    so two runs with the same seed give the same weights on CPU. ``method`` names a training
    method in :data:`robustlab.training.METHODS`; ``method_options`` holds its settings (names
    and values are checked against the method's own ``Options`` dataclass here, so a misspelt
    option fails at once and lists the valid ones).

    Adversarial training:

    - ``threat``: the threat model to train against and to evaluate on, as
      ``{"norm": "Linf", "eps": 0.3, "bounds": (0.0, 1.0)}`` (``bounds`` optional) or a
      :class:`~robustlab.threat.ThreatModel` (stored as that dict, so configs stay plain data).
      Needed by adversarial methods; optional for the others (it turns on robust validation).
    - ``eps_warmup_epochs``: ramp eps linearly from (almost) 0 to ``threat.eps`` over the first
      this many epochs, per optimizer step (0: no warm-up). Must lie in ``[0, epochs]``.
    - ``bn_mode``: model mode during the inner maximization: ``"eval"`` (running BatchNorm
      statistics, no Dropout, statistics not updated by attack forwards; TRADES' and MMA's
      choice) or ``"train"`` (batch statistics, as in Madry et al.'s CIFAR-10 code).
    - ``robust_eval_samples`` / ``robust_eval_steps``: with a threat and validation data, each
      epoch also measures robust accuracy under PGD with ``robust_eval_steps`` steps (random
      start, step ``2.5 eps / steps``) on the first ``robust_eval_samples`` validation examples
      (0: off); the best checkpoint is then the one with the highest robust accuracy.
    - ``mixed_precision``: autocast in the training steps (the attack and the loss): float16
      with a gradient scaler on CUDA, bfloat16 on CPU (about 1.9x faster per step for a
      WRN-16-2 on a CPU with AVX-512 BF16); parameters and validation stay float32.

    ``augment``: the data augmentation of every training batch, a name in
    :data:`robustlab.training.augment.AUGMENTATIONS` (``"crop-flip"``: random crops of the
    4-pixel zero-padded image and random horizontal flips, per example, the standard CIFAR-10
    augmentation), or ``None`` (the default): none. It is applied on the training device before
    the method's inner maximization, from a generator derived from ``seed``.

    ``channels_last``: train with the model's 4-d weights and every training batch in the
    channels-last memory format (``[N, C, H, W]`` images only), which oneDNN's CPU convolutions
    run faster for some networks (a WRN-16-2 step on CIFAR-10: 0.93 instead of 1.18 CPU seconds
    on one thread; the ODE networks run slower: docs/zoo.md). The values computed are the same up
    to floating-point summation order; the model is returned in the default format.

    Fields added after configurations were first stored (metadata ``"omit_default"``) are left
    out of :meth:`to_dict` while they hold their default, so every configuration stored before
    them (checkpoints, model cards, the reproductions' cache keys) still reads as the same
    configuration; :meth:`from_dict` fills them in.
    """

    # Each field's metadata: "help", one line for `robustlab train --help` (which derives an option
    # from every field, with the field's default), and "choices" where the values are a fixed set.
    epochs: int = field(default=10, metadata={
        "help": "passes over the training data (free training: epochs' worth of steps, a multiple of replays)"})
    batch_size: int = field(default=128, metadata={
        "help": "examples per optimizer step (under torchrun, split over the ranks)"})
    optimizer: str = field(default="sgd", metadata={"help": "the optimizer (sgd: with momentum)", "choices": OPTIMIZERS})
    lr: float = field(default=0.1, metadata={"help": "learning rate (the schedule's peak)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum in [0, 1) (adam ignores it)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "L2 weight decay (adam: an L2 penalty)"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum (sgd with momentum > 0)"})
    schedule: str = field(default="cosine", metadata={
        "help": "learning-rate schedule, stepped per iteration", "choices": SCHEDULES})
    milestones: tuple[float, ...] = field(default=(0.5, 0.75), metadata={
        "help": "step schedule: increasing fractions of training at which the rate is multiplied by gamma"})
    gamma: float = field(default=0.1, metadata={"help": "step schedule: the factor at each milestone, in (0, 1]"})
    seed: int = field(default=0, metadata={
        "help": "drives all randomness of the run (initialisation, shuffling, the methods' random starts)"})
    method: str = field(default="natural", metadata={"help": "training method", "choices": METHODS})
    method_options: dict = field(default_factory=dict, metadata={"help": "the method's options"})
    threat: dict | None = field(default=None, metadata={
        "help": "the threat model to train against and validate on"})
    eps_warmup_epochs: float = field(default=0, metadata={
        "help": "ramp eps linearly over this many epochs (0: no warm-up)"})
    bn_mode: str = field(default="eval", metadata={
        "help": "model mode in the inner maximization", "choices": BN_MODES})
    robust_eval_samples: int = field(default=500, metadata={
        "help": "validation samples for the PGD robust accuracy of each epoch (0: off)"})
    robust_eval_steps: int = field(default=10, metadata={"help": "PGD steps of the robust validation"})
    mixed_precision: bool = field(default=False, metadata={"help": "autocast the training steps: float16 on CUDA, bfloat16 on CPU"})
    augment: str | None = field(default=None, metadata={
        "help": "data augmentation of each training batch, before the method's attack (none by default)",
        "choices": AUGMENTATIONS, "omit_default": True})
    channels_last: bool = field(default=False, metadata={
        "help": "keep the model's weights and each batch in the channels-last memory format while training (images "
                "only; faster convolutions on CPU)", "omit_default": True})

    def __post_init__(self) -> None:
        _require_int("epochs", self.epochs, 1)
        _require_int("batch_size", self.batch_size, 1)
        _require_int("seed", self.seed, 0)
        for f in fields(self):
            if "choices" in f.metadata:
                _require_choice(f.name, getattr(self, f.name), f.metadata["choices"], optional=f.default is None)
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
        self.threat = self._checked_threat(self.threat)
        self.eps_warmup_epochs = _require_float("eps_warmup_epochs", self.eps_warmup_epochs)
        if not 0 <= self.eps_warmup_epochs <= self.epochs:
            raise RobustlabError(
                "TrainConfig.eps_warmup_epochs is the number of epochs over which eps ramps up; "
                f"it must lie in [0, epochs={self.epochs}], got {self.eps_warmup_epochs}"
            )
        if self.eps_warmup_epochs > 0 and self.threat is None:
            raise RobustlabError("TrainConfig.eps_warmup_epochs needs a threat model (TrainConfig.threat)")
        _require_int("robust_eval_samples", self.robust_eval_samples, 0)
        _require_int("robust_eval_steps", self.robust_eval_steps, 1)
        for name in ("mixed_precision", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise RobustlabError(f"TrainConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.method_options, dict):
            raise RobustlabError(
                f"TrainConfig.method_options must be a dict of option names to values, got {self.method_options!r}"
            )
        self.method_options = dict(self.method_options)
        METHODS[self.method].check_config(self)

    @staticmethod
    def _checked_threat(threat) -> dict | None:
        if threat is None:
            return None
        if isinstance(threat, ThreatModel):
            threat = threat.to_dict()
        if not isinstance(threat, dict) or not {"norm", "eps"} <= set(threat) <= {"norm", "eps", "bounds"}:
            raise RobustlabError(
                "TrainConfig.threat must be a ThreatModel or a dict with 'norm', 'eps' and optionally "
                f"'bounds', e.g. {{'norm': 'Linf', 'eps': 0.3}}; got {threat!r}"
            )
        eps = threat["eps"]
        if not is_number(eps, finite=False) or not (math.isfinite(eps) and eps > 0):
            raise RobustlabError(f"TrainConfig.threat eps must be a finite number > 0 for training, got {eps!r}")
        if threat["norm"] not in NORMS:
            raise RobustlabError(f"TrainConfig.threat norm must be one of {sorted(NORMS)}, got {threat['norm']!r}")
        bounds = threat.get("bounds", (0.0, 1.0))
        try:
            low, high = (float(b) for b in bounds)
            model = threat_model(threat["norm"], float(eps), (low, high))
        except (TypeError, ValueError) as exc:
            raise RobustlabError(f"TrainConfig.threat is not a valid threat model: {exc}") from None
        return {"norm": model.norm, "eps": model.eps, "bounds": model.bounds}

    def threat_model(self) -> ThreatModel | None:
        """``threat`` as a :class:`~robustlab.threat.ThreatModel` (``None`` without one)."""
        if self.threat is None:
            return None
        return ThreatModel.from_dict(self.threat)

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
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise RobustlabError(f"TrainConfig.milestones must be increasing, got {values}")
        return values

    def to_dict(self) -> dict:
        """Plain-Python form (safe to store in a checkpoint and to write as JSON), without the
        ``"omit_default"`` fields that hold their default (see the class docstring)."""
        data = asdict(self)
        for f in fields(self):
            if f.metadata.get("omit_default") and data[f.name] == f.default:
                del data[f.name]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """The configuration :meth:`to_dict` gave (also after a JSON round trip); fields it lacks
        take their defaults, unknown keys are refused."""
        if not isinstance(data, dict):
            raise RobustlabError(f"a TrainConfig is read from a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise RobustlabError(f"unknown TrainConfig field(s) {unknown}; valid: {sorted(cls.field_names())}")
        return cls(**data)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
