"""MMA training (Ding et al., "MMA training: direct input space margin maximization through
adversarial training", ICLR 2020), as in the reference code ``BorealisAI/mma_training``
(``trainer.py``, ``anpgd.py``, ``train.py``, ``config.py``).

Per batch ``(x [B, ...], y [B], index [B])``:

1. a clean forward in train mode; the **SLM margin** ``logsumexp_{j != y} z_j - z_y`` splits the
   batch into correct (SLM < 0, stricter than the argmax) and wrong examples;
2. **AN-PGD** (:func:`an_pgd`) on the batch, with the model in ``TrainConfig.bn_mode``: PGD on
   the summed SLM at each example's own radius ``prev_eps = max(min_eps, stored eps)`` (random
   start, ``steps`` steps of ``step_size_factor * prev_eps / steps``), then a bisection of
   ``bisection_steps`` steps along the PGD direction for the smallest radius at which the SLM
   turns non-negative, on ``[0, 1.05 d_max]``;
3. the objective ``(1 - c) * MMA + c * CE(x)`` with ``c = clean_loss_coeff`` and
   ``MMA = [sum_{correct, eps < d_max} CE(x_adv) + sum_{wrong} CE(x)] / B``: examples whose margin
   already reaches ``d_max`` are dropped (the hinge), and the denominator is the whole batch;
4. after the optimizer step, each example's new eps is stored **by dataset index** (``batch.index``);
   wrong examples store 0, so they restart at ``min_eps``.

The reference code mixes the *gradients* of the two terms with weights ``(1 - c, c)``; mixing
the losses gives the same gradient with one backward pass. OMMA (``"omma"``) is ``c = 0``.

Deviations from the reference code, each on purpose:

- the whole batch goes through AN-PGD and the wrong examples' results are masked out, instead of
  indexing out the correct ones: shapes stay static and no host synchronisation is needed; the
  extra cost is the fraction of misclassified training examples;
- the bisection forwards run in ``bn_mode`` like the PGD steps (the reference code runs them in
  train mode, which lets its search update the BatchNorm running statistics ten times a batch);
- the returned ``x_adv = x + eps * u`` is clipped to the input box: the bisection judged the
  clipped point, and the reference's unclipped one may leave the box.

Per-example state: ``per_example["eps"]``, float32 ``[num_train]`` indexed by dataset index
(0 = not seen yet, or wrong at its last visit; both start from ``min_eps``). The loop calls
:meth:`MMATraining.reserve` with the training-set size before training (on every rank of a
distributed run, so all ranks hold the same shape); used outside the loop, the tensor grows to
cover the largest index seen. Only the rows of ``batch.index`` change in a step. It is in ``state_dict``, so a resumed run continues with the same margins.

Supported norms: Linf and L2 (the paper's). ``TrainConfig.threat`` supplies the norm and the
input box; its eps is not used for training (each example has its own), only for the loop's
robust validation. An eps warm-up does not apply and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab._tensors import flat, per_sample
from robustlab.errors import RobustlabError
from robustlab.threat import ThreatModel
from robustlab.training.adversarial import (
    RandomStartMethod,
    ascend,
    check_positive_float,
    check_positive_int,
)
from robustlab.training.methods import METHODS, Batch, LossOutput, inner_mode
from robustlab.validate import is_number

__all__ = ["MMA_PRESETS", "MMAOptions", "MMATraining", "OMMAOptions", "OMMATraining", "an_pgd", "slm_margin"]

#: ``(dataset, norm) -> (d_max, min_eps, steps)``. ``min_eps`` and ``steps`` (nb_iter) from the
#: reference ``config.py``; ``d_max`` (``--hinge_maxeps``) from ``run_mnist_training.sh`` /
#: ``run_cifar10_training.sh``: MNIST Linf 0.45 (the paper's MMA-0.45, Table 1), CIFAR-10 Linf
#: 32/255 (MMA-32); for L2 the scripts train a grid ({2, 4, 6} on MNIST, {1, 2, 3} on CIFAR-10)
#: and the preset takes its middle value.
MMA_PRESETS = {
    ("mnist", "Linf"): (0.45, 0.1, 40),
    ("mnist", "L2"): (4.0, 0.5, 40),
    ("cifar10", "Linf"): (32 / 255, 0.005, 10),
    ("cifar10", "L2"): (2.0, 0.5, 10),
}
NORMS = ("Linf", "L2")

#: The bisection searches ``[0, MAX_EPS_FACTOR * d_max]`` (``train.py``: ``attack_maxeps =
#: hinge_maxeps * 1.05``), so an example that is never broken ends above ``d_max`` and is hinged.
MAX_EPS_FACTOR = 1.05

# Bisection steps for the exact L2 projection onto ball ∩ box (2**-50 relative precision).
_PROJECTION_STEPS = 50


def slm_margin(logits: Tensor, y: Tensor) -> Tensor:
    """Soft logit margin ``logsumexp_{j != y} z_j - z_y`` ``[N]`` (float32) of logits ``[N, K]``:
    negative exactly when ``z_y`` beats the log-sum-exp of the other logits (which implies the
    argmax is ``y``); the reference code's ``slm`` loss."""
    logits = logits.float()
    others = logits.scatter(1, y[:, None], -math.inf)
    return others.logsumexp(dim=1) - logits.gather(1, y[:, None]).squeeze(1)


class _PerExampleBall:
    """The ``threat`` norm ball with a radius per example (``eps [N]``) ∩ the threat's box: the
    ``project`` / ``steepest_direction`` pair :func:`~robustlab.training.adversarial.ascend`
    needs, plus a uniform random start."""

    def __init__(self, threat: ThreatModel, eps: Tensor) -> None:
        self.threat = threat
        self.eps = eps

    def steepest_direction(self, grad: Tensor, x_adv: Tensor | None = None) -> Tensor:
        return self.threat.steepest_direction(grad, x_adv)

    def project(self, x: Tensor, x_adv: Tensor) -> Tensor:
        lo, hi = self.threat.bounds
        eps = per_sample(self.eps, x).to(x.dtype)
        if self.threat.norm == "Linf":
            return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(lo, hi)
        # L2: as ThreatModel L2.project, with a radius per example. KKT: delta = clip(t * v) for
        # some t in [0, 1], and the clipped norm grows with t; bisect on t.
        lower, upper = lo - x, hi - x
        v = x_adv - x

        def clipped(t: Tensor) -> Tensor:
            return torch.minimum(torch.maximum(per_sample(t, v) * v, lower), upper)

        t_lo, t_hi = v.new_zeros(len(v)), v.new_ones(len(v))
        feasible = flat(clipped(t_hi)).norm(dim=1) <= self.eps
        for _ in range(_PROJECTION_STEPS):
            mid = (t_lo + t_hi) / 2
            inside = flat(clipped(mid)).norm(dim=1) <= self.eps
            t_lo, t_hi = torch.where(inside, mid, t_lo), torch.where(inside, t_hi, mid)
        return x + clipped(torch.where(feasible, t_hi, t_lo))

    def random_init(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.threat.norm == "Linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return self.project(x, x + (2 * noise - 1) * per_sample(self.eps, x))
        # Uniform in the L2 ball: Gaussian direction, radius eps * u^(1/d); clipping to a box that
        # contains x only shrinks each coordinate, so the point stays in the ball.
        d = math.prod(x.shape[1:]) or 1
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / per_sample(flat(direction).norm(dim=1).clamp_min(1e-12), x)
        radius = self.eps * torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype) ** (1 / d)
        return self.threat.clip_to_box(x + per_sample(radius, x) * direction)


def an_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    prev_eps: Tensor,
    *,
    threat: ThreatModel,
    max_eps: float,
    steps: int,
    bisection_steps: int = 10,
    step_size_factor: float = 2.5,
    generator: torch.Generator,
    scale_loss=lambda t: t,
) -> tuple[Tensor, Tensor]:
    """Adaptive-norm PGD (Ding et al., Alg. 2; ``anpgd.py``): ``(x_adv [N, ...], eps [N])``.

    ``x``: ``[N, ...]`` in ``threat.bounds``; ``y``: ``[N]``; ``prev_eps``: ``[N]`` radii in
    ``(0, max_eps]``. ``threat`` gives the norm (Linf or L2) and the box; its eps is unused.
    PGD maximizes the summed SLM margin in the ball of radius ``prev_eps`` (per example) ∩ box
    from a uniform random start, with ``steps`` steps of ``step_size_factor * prev_eps / steps``
    (``eps_iter_scale = 2.5``), and returns its last iterate ``x_pgd``. With the unit direction
    ``u = (x_pgd - x) / prev_eps``, a bisection on ``[0, max_eps]`` starting at ``prev_eps``
    then finds where ``clip(x + eps u)`` crosses SLM = 0: each step moves the lower end up to the
    current eps if the point is still correct (SLM < 0) and the upper end down otherwise, and
    the next eps is the midpoint. The result is within ``max_eps / 2**bisection_steps`` of the
    crossing along ``u``; an example never broken ends near ``max_eps``. ``x_adv = clip(x + eps u)``.

    The model is used as it is (its mode is the caller's choice); gradients are taken with
    respect to the input only. Cost: ``steps`` forwards and backwards, ``bisection_steps``
    forwards (the reference code spends one more, on a margin it never reads).
    """
    ball = _PerExampleBall(threat, prev_eps)
    x_pgd = ascend(model, x, ball.random_init(x, generator), lambda logits: slm_margin(logits, y),
                   threat=ball, steps=steps, step_size=per_sample(step_size_factor * prev_eps / steps, x),
                   scale_loss=scale_loss)
    unit = (x_pgd - x) / per_sample(prev_eps + 1e-12, x)
    eps, low = prev_eps, torch.zeros_like(prev_eps)
    high = torch.full_like(prev_eps, max_eps)
    with torch.no_grad():
        margin = slm_margin(model(x_pgd), y)
        for step in range(bisection_steps):
            broken = margin >= 0
            low = torch.where(broken, low, torch.maximum(low, eps))
            high = torch.where(broken, torch.minimum(high, eps), high)
            eps = (low + high) / 2
            if step + 1 < bisection_steps:
                margin = slm_margin(model(threat.clip_to_box(x + per_sample(eps, x) * unit)), y)
    return threat.clip_to_box(x + per_sample(eps, x) * unit).detach(), eps


@dataclass(frozen=True)
class MMAOptions:
    """Settings of MMA training (defaults: the reference code, see the module docstring).

    ``preset``: ``"mnist"`` (default) or ``"cifar10"``; with the threat's norm it picks
    ``d_max`` / ``min_eps`` / ``steps`` from :data:`MMA_PRESETS` (MNIST Linf: 0.45, 0.1, 40).
    ``d_max``: the hinge, the margin beyond which an example is no longer trained on (the
    paper's ``d_max``, ``--hinge_maxeps``). ``min_eps``: the smallest PGD radius (``attack_mineps``).
    ``steps``: PGD steps (``nb_iter``). Explicit values override the preset.
    ``bisection_steps``: 10 (``num_search_steps``). ``step_size_factor``: PGD step as a multiple
    of ``prev_eps / steps``, 2.5 (``eps_iter_scale``). ``clean_loss_coeff``: ``c`` in
    ``(1 - c) MMA + c CE(x)``, 1/3 (``config.py``; tuned among 1/3, 1/2, 2/3 on CIFAR-10 Linf,
    authors' reply on OpenReview HkeryxBtPB).
    """

    preset: str = "mnist"
    d_max: float | None = None
    min_eps: float | None = None
    steps: int | None = None
    bisection_steps: int = 10
    step_size_factor: float = 2.5
    clean_loss_coeff: float = 1 / 3

    def __post_init__(self) -> None:
        presets = sorted({dataset for dataset, _ in MMA_PRESETS})
        if self.preset not in presets:
            raise RobustlabError(f"MMAOptions.preset must be one of {presets}, got {self.preset!r}")
        for name in ("d_max", "min_eps"):
            if getattr(self, name) is not None:
                check_positive_float("MMAOptions", name, getattr(self, name))
        if self.steps is not None:
            check_positive_int("MMAOptions", "steps", self.steps)
        check_positive_int("MMAOptions", "bisection_steps", self.bisection_steps)
        check_positive_float("MMAOptions", "step_size_factor", self.step_size_factor)
        c = self.clean_loss_coeff
        if not is_number(c, finite=False) or not 0 <= c <= 1:
            raise RobustlabError(f"MMAOptions.clean_loss_coeff must lie in [0, 1], got {c!r}")

    def resolve(self, norm: str) -> tuple[float, float, int]:
        """``(d_max, min_eps, steps)`` for threat norm ``norm``; raises unless ``min_eps < d_max``."""
        d_max, min_eps, steps = MMA_PRESETS[(self.preset, norm)]
        d_max = d_max if self.d_max is None else float(self.d_max)
        min_eps = min_eps if self.min_eps is None else float(self.min_eps)
        steps = steps if self.steps is None else self.steps
        if not min_eps < d_max:
            raise RobustlabError(f"MMA needs min_eps < d_max, got min_eps={min_eps:g} and d_max={d_max:g}")
        return d_max, min_eps, steps


@dataclass(frozen=True)
class OMMAOptions(MMAOptions):
    """:class:`MMAOptions` with ``clean_loss_coeff = 0`` (OMMA: the MMA loss alone)."""

    clean_loss_coeff: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clean_loss_coeff != 0:
            raise RobustlabError(
                f"OMMA is MMA without the clean loss: clean_loss_coeff must be 0, got {self.clean_loss_coeff!r} "
                "(use method 'mma' for a clean term)"
            )


@dataclass(frozen=True)
class _Pending:
    """What ``make_inputs`` hands to ``loss`` and ``after_step`` of the same batch."""

    batch: Batch
    clean_logits: Tensor
    correct: Tensor
    eps: Tensor


class MMATraining(RandomStartMethod):
    """MMA training; see the module docstring. The reported training accuracy is on the clean
    inputs (the AN-PGD points lie on the decision boundary by construction, as the reference
    code reports ``clnacc``).

    Cost per batch: 1 forward for the split, ``steps`` forwards and backwards plus
    ``bisection_steps`` forwards for AN-PGD, then 1 forward and 1 backward through the
    adversarial batch plus the backward of the clean forward (when ``clean_loss_coeff > 0``).
    """

    name = "mma"
    Options = MMAOptions

    def __init__(self, config, *, device="cpu") -> None:
        super().__init__(config, device=device)
        self.d_max, self.min_eps, self.steps = self.options.resolve(config.threat["norm"])
        self.per_example: dict[str, Tensor] = {"eps": torch.zeros(0, device=self.device)}
        self._pending: _Pending | None = None

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        norm = config.threat["norm"]
        if norm not in NORMS:
            raise RobustlabError(f"MMA training supports the norms {list(NORMS)}, got threat norm {norm!r}")
        if config.eps_warmup_epochs:
            raise RobustlabError(
                "MMA training chooses each example's eps itself, so an eps warm-up does not apply: "
                "set eps_warmup_epochs=0"
            )
        cls.Options(**config.method_options).resolve(norm)

    def reserve(self, num_train: int) -> None:
        """Size the per-example state for a training set of ``num_train`` examples (it only grows)."""
        eps = self.per_example["eps"]
        if num_train > len(eps):
            self.per_example["eps"] = torch.cat([eps, eps.new_zeros(num_train - len(eps))])

    @property
    def average_margin(self) -> float:
        """Mean stored eps over the training set (the paper's "average margin"; examples not
        seen yet count as 0)."""
        eps = self.per_example["eps"]
        return float(eps.mean()) if len(eps) else 0.0

    def _checked_index(self, batch: Batch) -> Tensor:
        index = batch.index
        if (not isinstance(index, Tensor) or index.dtype not in (torch.int64, torch.int32)
                or index.shape != (len(batch.x),)):
            got = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, Tensor) else type(index).__name__
            raise RobustlabError(
                "MMA keeps each training example's eps by its dataset index, so every batch needs "
                f"batch.index: integer [{len(batch.x)}] positions in the training set; got {got}"
            )
        if len(index):
            low, high = index.aminmax()
            lowest, highest = int(low), int(high)
            if lowest < 0:
                raise RobustlabError(f"batch.index holds dataset positions and must be >= 0, got {lowest}")
            self.reserve(highest + 1)
        return index

    def make_inputs(self, model: nn.Module, batch: Batch) -> Tensor:
        index = self._checked_index(batch)
        x, y = batch.x, batch.y
        # The clean forward runs in train mode, as in the reference, and its graph is kept for
        # the clean term of the objective, so the loss step does not repeat it.
        with torch.set_grad_enabled(self.options.clean_loss_coeff > 0 and torch.is_grad_enabled()):
            clean_logits = model(x)
        correct = slm_margin(clean_logits.detach(), y) < 0
        prev_eps = self.per_example["eps"][index].clamp_min(self.min_eps).to(x.dtype)
        with inner_mode(model, self.config.bn_mode):
            x_adv, eps = an_pgd(model, x, y, prev_eps, threat=batch.required_threat,
                                max_eps=MAX_EPS_FACTOR * self.d_max, steps=self.steps,
                                bisection_steps=self.options.bisection_steps,
                                step_size_factor=self.options.step_size_factor, generator=self.generator,
                                scale_loss=batch.scale_loss)
        self._pending = _Pending(batch, clean_logits, correct, torch.where(correct, eps, torch.zeros_like(eps)))
        return torch.where(per_sample(correct, x), x_adv, x)

    def _take_pending(self, batch: Batch, caller: str) -> _Pending:
        pending = self._pending
        if pending is None or pending.batch is not batch:
            raise RobustlabError(f"MMATraining.{caller} must follow make_inputs on the same batch")
        return pending

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        pending = self._take_pending(batch, "loss")
        ce = F.cross_entropy(model(x_train).float(), batch.y, reduction="none")
        # Correct examples at or past the hinge are dropped; wrong ones (trained at x) always count.
        kept = ~pending.correct | (pending.eps < self.d_max)
        mma = torch.where(kept, ce, torch.zeros_like(ce)).sum() / len(ce)
        c = self.options.clean_loss_coeff
        loss = (1 - c) * mma
        if c > 0:
            loss = loss + c * F.cross_entropy(pending.clean_logits.float(), batch.y)
        return LossOutput(loss, pending.clean_logits)

    def after_step(self, model: nn.Module, x_train: Tensor, batch: Batch) -> None:
        pending = self._take_pending(batch, "after_step")
        eps = self.per_example["eps"]
        eps[batch.index] = pending.eps.to(eps.dtype)
        self._pending = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "per_example": {k: v.clone() for k, v in self.per_example.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.per_example = {k: v.to(self.device, torch.float32) for k, v in state["per_example"].items()}


class OMMATraining(MMATraining):
    """OMMA: MMA training without the clean term (``clean_loss_coeff = 0``, Ding et al. Sec. 5)."""

    name = "omma"
    Options = OMMAOptions


METHODS.add(MMATraining)
METHODS.add(OMMATraining)
