"""Gaussian-noise augmentation and TisODE's steady-state term as training methods (Yan, Du, Tan &
Feng, "On Robustness of Neural Ordinary Differential Equations", ICLR 2020;
``HanshuYAN/TisODE:mnist/main_*_gaus.py``).

- ``"gaussian-noise"``: each training image independently has a ``probability`` chance (a fair
  coin in the reference's ``add_noise_tensor_random``) of Gaussian noise with ``sigma`` drawn
  uniformly from ``sigmas`` (0–255 scale, so ``sigma / 255`` times the box's width), then is
  clamped to the box; the objective is cross-entropy on the noisy batch.
- ``"tisode"``: the same augmentation plus TisODE's steady-state regularizer,
  ``CE + steady_weight * mean_i r_i`` with ``r_i`` the integral of ``|f(z(t))|`` over the model's
  steady-state window (:func:`robustlab.models.ode.logits_and_steady_state`), switched on from
  pass ``steady_from_epoch`` (0-based, as the reference's ``if epoch >= args.epoch_steady``;
  the default 5 means from the sixth epoch; the loop's :attr:`Batch.epoch` is 1-based). Needs a
  model with a TisODE block. ``probability=0`` gives the regularizer without augmentation.

The noise is drawn from the method's own generator (seeded from ``TrainConfig.seed``, saved in
checkpoints). The box is ``TrainConfig.threat``'s bounds when a threat is set, else ``[0, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks.noise import random_gaussian_noise
from robustlab.errors import RobustlabError
from robustlab.models.ode import (
    STEADY_STATE_FROM_EPOCH,
    STEADY_STATE_WEIGHT,
    logits_and_steady_state,
    steady_state_blocks,
)
from robustlab.training.methods import METHODS, Batch, LossOutput, TrainingMethod, method_generator
from robustlab.validate import is_int, is_number

__all__ = ["GaussianNoiseOptions", "GaussianNoiseTraining", "SteadyStateOptions", "SteadyStateTraining"]

#: ``main_*_gaus.py:add_noise_tensor_random``: ``random.choice([True, False])`` and
#: ``random.choice([50, 75, 100])``.
TRAIN_SIGMAS = (50.0, 75.0, 100.0)
NOISE_PROBABILITY = 0.5


def _check_noise(owner: str, sigmas: tuple, probability: float) -> tuple[float, ...]:
    if isinstance(sigmas, (str, bytes)) or not hasattr(sigmas, "__iter__"):
        raise RobustlabError(f"{owner}.sigmas must be a list of noise levels on the 0-255 scale, got {sigmas!r}")
    values = tuple(sigmas)
    if not values or any(not is_number(s, finite=False) or not 0 < s < math.inf
                         for s in values):
        raise RobustlabError(f"{owner}.sigmas must be a non-empty list of finite numbers > 0 (0-255 scale), "
                             f"got {sigmas!r}")
    if not is_number(probability, finite=False) or not 0 <= probability <= 1:
        raise RobustlabError(f"{owner}.probability must be a number in [0, 1], got {probability!r}")
    return tuple(float(s) for s in values)


@dataclass(frozen=True)
class GaussianNoiseOptions:
    """``sigmas``: noise levels on the 0–255 scale, one drawn uniformly per noisy image;
    ``probability``: chance that an image gets noise. Defaults: Yan et al.'s
    ``add_noise_tensor_random`` (a fair coin, sigma in {50, 75, 100})."""

    sigmas: tuple[float, ...] = TRAIN_SIGMAS
    probability: float = NOISE_PROBABILITY

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", _check_noise(type(self).__name__, self.sigmas, self.probability))


@dataclass(frozen=True)
class SteadyStateOptions(GaussianNoiseOptions):
    """The augmentation's options plus ``steady_weight`` (``w_steady``, 0.01) and
    ``steady_from_epoch`` (``epoch_steady``, 5, 0-based): ``mnist/options.py`` of the reference."""

    steady_weight: float = STEADY_STATE_WEIGHT
    steady_from_epoch: int = STEADY_STATE_FROM_EPOCH

    def __post_init__(self) -> None:
        super().__post_init__()
        w = self.steady_weight
        if not is_number(w, finite=False) or not 0 <= w < math.inf:
            raise RobustlabError(f"SteadyStateOptions.steady_weight must be a finite number >= 0, got {w!r}")
        start = self.steady_from_epoch
        if not is_int(start, 0):
            raise RobustlabError(f"SteadyStateOptions.steady_from_epoch must be an integer >= 0 (0-based epoch), "
                                 f"got {start!r}")


class GaussianNoiseTraining(TrainingMethod):
    """Cross-entropy on Gaussian-augmented inputs; see the module docstring. The reported
    training accuracy is on the augmented batch. Cost per batch: 1 forward and 1 backward."""

    name = "gaussian-noise"
    Options = GaussianNoiseOptions

    def __init__(self, config, *, device="cpu") -> None:
        super().__init__(config, device=device)
        self.generator = method_generator(config, self.device)
        threat = config.threat_model()
        self.bounds = (0.0, 1.0) if threat is None else threat.bounds

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        return random_gaussian_noise(batch.x, sigmas=self.options.sigmas, probability=self.options.probability,
                                     generator=self.generator, bounds=self.bounds)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class SteadyStateTraining(GaussianNoiseTraining):
    """TisODE training: the augmentation plus ``steady_weight * mean steady-state term`` from
    ``steady_from_epoch`` on. Cost per batch: 1 forward and 1 backward, the forward extended over
    the steady-state window (``(steady_end - t_end) / step_size`` more evaluations of the dynamics
    per TisODE block) once the term is on."""

    name = "tisode"
    Options = SteadyStateOptions

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        # Checked on every step, not only once the term is on, so a wrong model fails at once
        # rather than after steady_from_epoch epochs.
        if not steady_state_blocks(model):
            raise RobustlabError("training method 'tisode' needs a model with a TisODE block (build_model('tisode', "
                                 "...)); for Gaussian augmentation alone use method 'gaussian-noise'")
        if batch.epoch - 1 < self.options.steady_from_epoch:
            return super().loss(model, x_train, batch)
        logits, penalty = logits_and_steady_state(model, x_train)
        return LossOutput(F.cross_entropy(logits, batch.y) + self.options.steady_weight * penalty.mean(), logits)


METHODS.add(GaussianNoiseTraining)
METHODS.add(SteadyStateTraining)
