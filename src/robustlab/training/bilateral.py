"""Bilateral adversarial training (Wang & Zhang, "Bilateral adversarial training: towards fast
training of more robust models against adversarial attacks", ICCV 2019), as in the reference
code ``wjyouch/bilateral-adversarial-training`` (``train.py`` with the flags of ``train.sh``).

Both the input and the label are perturbed, and the model is trained with the soft-label
cross-entropy on the perturbed pair only (no clean term):

- **input** (``attack``): a uniform random start in the eps-ball ∩ box, then one step of size
  ``step_size_factor * eps`` along the threat's steepest direction, projected back:
  ``"r-mc"`` descends ``CE(x, t)`` toward the most confusing class ``t = argmax_{k != y} z_k``
  of the *clean* logits (the paper's R-MC, the default); ``"r-ll"`` toward the least likely
  class ``argmin_{k != y} z_k`` (R-LL); ``"r-fgsm"`` ascends ``CE(x, y)`` (R-FGSM);
- **label** (``labels``): ``"la"`` the adversarial label (:func:`adversarial_labels`, the
  default), ``"ls"`` uniform label smoothing (:func:`uniform_labels`), ``"none"`` the one-hot label.

The clean logits (for the target class and the adversarial label) and the attack's gradient are
computed with the model in ``TrainConfig.bn_mode`` (eval by default, as the reference code's
``is_train: False``); the labels are constants of the objective (no gradient flows through them).
Differences from the reference code: the random start is clipped to the input box before the
gradient is taken (the reference clips only after the step), and every norm takes its threat
model's steepest step (the reference code is L∞ only, where that is the sign step).

One-step methods with soft labels are prone to gradient masking: evaluate the result with
strong, varied attacks (many restarts, the margin loss, black-box), not with the training attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.training.adversarial import RandomStartMethod, ascend, check_positive_float
from robustlab.training.methods import METHODS, Batch, LossOutput, inner_mode
from robustlab.validate import is_number

__all__ = ["ATTACKS", "LABELS", "BilateralOptions", "BilateralTraining", "adversarial_labels", "uniform_labels"]

ATTACKS = ("r-mc", "r-ll", "r-fgsm")
LABELS = ("la", "ls", "none")

# ``adv_labels`` takes -log(p + 1e-8): the floor caps the "distance" of very unlikely classes at
# about 18.4, which shapes the label; -log_softmax would let one class take almost all the mass.
_PROBABILITY_FLOOR = 1e-8


def adversarial_labels(logits: Tensor, y: Tensor, *, beta: float, gamma: float) -> Tensor:
    """The adversarial label (LA, Wang & Zhang Sec. 3.2; ``adv_labels``): ``[N, K]`` rows summing to 1.

    ``logits``: ``[N, K]`` clean logits, ``y``: ``[N]``. With ``L_k = -log(p_k + 1e-8)`` (the
    gradient of the cross-entropy with respect to the label), ``v_MC = min_{k != y} L_k``,
    ``v_LL = max_{k != y} L_k`` and ``D = sum_{k != y} (L_k - v_MC + gamma)``:
    ``eps_y = 1 / (1 + beta (v_LL - v_MC + gamma) / D)``, ``label_k = eps_y (L_k - v_MC + gamma) / D``
    for ``k != y`` and ``label_y = 1 - eps_y``. This moves the mass ``eps_y`` onto the other
    classes in proportion to how *unlikely* they are, with the largest ``eps_y`` that keeps
    ``label_y >= beta * max_{k != y} label_k`` (equality holds); ``eps_y`` lies in
    ``(1 / (1 + beta), 1 / (1 + beta / (K - 1))]``.
    """
    losses = -(F.softmax(logits.float(), dim=1) + _PROBABILITY_FLOOR).log()
    at_y = y[:, None]
    v_mc = losses.scatter(1, at_y, math.inf).amin(dim=1, keepdim=True)
    v_ll = losses.scatter(1, at_y, -math.inf).amax(dim=1, keepdim=True)
    shifted = (losses - v_mc + gamma).scatter(1, at_y, 0.0)
    total = shifted.sum(dim=1, keepdim=True)
    eps_y = 1 / (1 + beta * (v_ll - v_mc + gamma) / total)
    return (eps_y / total * shifted).scatter(1, at_y, 1 - eps_y)


def uniform_labels(y: Tensor, num_classes: int, eps_y: float) -> Tensor:
    """Uniform label smoothing (LS): ``[N, K]`` with ``1 - eps_y`` on ``y`` and ``eps_y / (K - 1)``
    on every other class."""
    labels = torch.full((len(y), num_classes), eps_y / (num_classes - 1), device=y.device)
    return labels.scatter(1, y[:, None], 1 - eps_y)


@dataclass(frozen=True)
class BilateralOptions:
    """Settings of bilateral adversarial training; defaults from the reference ``train.sh``
    (R-MC-LA: one step of size eps from a random start, MC target, adversarial labels).

    ``attack``: ``"r-mc"`` | ``"r-ll"`` | ``"r-fgsm"`` (see the module docstring).
    ``labels``: ``"la"`` | ``"ls"`` | ``"none"``. ``beta``: LA's ratio ``label_y / max_{k != y}
    label_k``, 9 (``--multi 9``). ``gamma``: LA's offset, 0.01 (``adv_labels(gamma=0.01)``).
    ``label_smoothing``: LS's fixed ``eps_y``; 0.5, the top of the paper's admissible range
    ``(1 / (1 + beta), 1 / (1 + beta / (K - 1))]`` for beta 9 and 10 classes (our choice: the
    paper's own LS value is not in the reference code). ``step_size_factor``: the one step as a
    multiple of eps, 1 (``train.sh``: 1 step of 8/255 at eps 8/255).
    """

    attack: str = "r-mc"
    labels: str = "la"
    beta: float = 9.0
    gamma: float = 0.01
    label_smoothing: float = 0.5
    step_size_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise RobustlabError(f"BilateralOptions.attack must be one of {list(ATTACKS)}, got {self.attack!r}")
        if self.labels not in LABELS:
            raise RobustlabError(f"BilateralOptions.labels must be one of {list(LABELS)}, got {self.labels!r}")
        check_positive_float("BilateralOptions", "beta", self.beta)
        check_positive_float("BilateralOptions", "gamma", self.gamma)
        check_positive_float("BilateralOptions", "step_size_factor", self.step_size_factor)
        s = self.label_smoothing
        if not is_number(s, finite=False) or not 0 < s < 1:
            raise RobustlabError(f"BilateralOptions.label_smoothing (eps_y) must lie in (0, 1), got {s!r}")


class BilateralTraining(RandomStartMethod):
    """Bilateral adversarial training; see the module docstring. The reported training accuracy
    is on the perturbed inputs. Cost per batch: 1 forward for the clean logits (skipped for
    R-FGSM with LS or one-hot labels), 1 forward and 1 backward for the attack, 1 forward and
    1 backward for the objective."""

    name = "bilateral"
    Options = BilateralOptions

    def __init__(self, config, *, device="cpu") -> None:
        super().__init__(config, device=device)
        # The adversarial labels come from make_inputs' clean forward; loss consumes them.
        self._pending: tuple[Batch, Tensor | None] | None = None

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        threat, x, y = batch.required_threat, batch.x, batch.y
        attack, labels = self.options.attack, self.options.labels
        with inner_mode(model, self.config.bn_mode):
            clean = None
            if attack != "r-fgsm" or labels == "la":
                with torch.no_grad():
                    clean = model(x).float()
            if attack == "r-fgsm":
                def loss_fn(logits: Tensor) -> Tensor:
                    return F.cross_entropy(logits.float(), y, reduction="none")
            else:
                excluded = math.inf if attack == "r-ll" else -math.inf
                assert clean is not None  # computed above for these attacks
                others = clean.scatter(1, y[:, None], excluded)
                target = others.argmin(dim=1) if attack == "r-ll" else others.argmax(dim=1)

                def loss_fn(logits: Tensor) -> Tensor:
                    return -F.cross_entropy(logits.float(), target, reduction="none")

            x_adv = ascend(model, x, threat.random_init(x, self.generator), loss_fn, threat=threat, steps=1,
                           step_size=self.options.step_size_factor * threat.eps, scale_loss=batch.scale_loss)
        la = None
        if labels == "la":
            assert clean is not None  # computed above for the "la" labels
            la = adversarial_labels(clean, y, beta=self.options.beta, gamma=self.options.gamma)
        self._pending = (batch, la)
        return x_adv

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        pending = self._pending
        if pending is None or pending[0] is not batch:
            raise RobustlabError("BilateralTraining.loss must follow make_inputs on the same batch")
        self._pending = None
        logits = model(x_train)
        labels = self.options.labels
        if labels == "none":
            return LossOutput(F.cross_entropy(logits, batch.y), logits)
        soft = pending[1] if labels == "la" else uniform_labels(batch.y, logits.shape[1], self.options.label_smoothing)
        assert soft is not None  # make_inputs made the "la" labels
        return LossOutput(-(soft * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean(), logits)


METHODS.add(BilateralTraining)
