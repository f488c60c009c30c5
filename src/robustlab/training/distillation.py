"""Defensive distillation (Papernot et al., S&P 2016), as re-implemented by Carlini & Wagner.

C&W's ``train_distillation`` (``carlini/nn_robust_attacks:train_models.py``, T = 100):

1. start teacher and student from the same initialisation,
2. train the teacher with ``softmax(Z / T)`` against the hard labels,
3. compute the soft labels ``softmax(Z_teacher / T)`` on the training set,
4. train the student with ``softmax(Z / T)`` against the soft labels,
5. deploy the student at ``T = 1``: its raw logits ``Z`` are the model's output.

Both stages run in the ordinary training loop (:func:`robustlab.training.train`) as two
registered methods, so they get its checkpoints, resumption, schedules and progress bars:

- ``"distillation-teacher"``: cross-entropy on ``Z / T`` (hard labels);
- ``"distillation-student"``: soft-label cross-entropy ``-sum_k p_k log softmax(Z / T)_k``
  with ``p = softmax(Z_teacher / T)``. The teacher is frozen and evaluated in eval mode, so
  ``p`` is a deterministic function of the input: computing it per batch (one extra forward
  without gradient) gives exactly the soft labels "computed once on the training set", without
  holding an ``[N, K]`` table the loop has no index into.

The temperature is the methods' option (``TrainConfig.method_options={"temperature": T}``,
default :data:`DEFAULT_TEMPERATURE`). The student's teacher is either a module, which
:func:`distill` builds the student method with and hands to :func:`train` (``method=``), or the
student's option ``teacher``: a saved teacher (a robustlab checkpoint path or ``zoo:NAME``, read as
``--model`` is), so that ``robustlab train --method distillation-student --option
teacher=PATH`` (and a zoo recipe) runs the second stage from configuration alone. A teacher whose
card says it was trained as ``"distillation-teacher"`` at another temperature is refused. Both
stages from one initialisation, as C&W: train the two with the same architecture and seed.
Without a teacher, ``"distillation-student"`` refuses to start.

**Numerics.** Soft labels are computed as ``exp(log_softmax(Z / T))`` in float64, never as a
log of a softmax; the student's loss uses ``log_softmax`` of its own tempered logits. After
training at ``T = 100`` the student's logits are about ``T`` times larger than a natural
model's (C&W report mean ``||Z||_1`` of 482 vs 5.8 on MNIST): at ``T = 1`` its softmax is
one-hot to float32 precision, so attacks that differentiate the *probabilities* (FGSM on the
softmax cross-entropy when the loss saturates, JSMA-F) see zero gradients and fail, which is
all defensive distillation does. Attacks on the *logits* (C&W's f6, JSMA-Z, DeepFool) are
unaffected: distillation does not make the network robust (C&W Sec. VIII, Table VI). Use
:func:`logit_norms` to check the scale after training.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.training.config import TrainConfig
from robustlab.training.loop import TrainResult, train
from robustlab.training.methods import METHODS, Batch, LossOutput, TrainingMethod
from robustlab.validate import is_number

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DistillationOptions",
    "DistillationResult",
    "DistillationStudentMethod",
    "DistillationStudentOptions",
    "DistillationTeacherMethod",
    "distill",
    "load_teacher",
    "logit_norms",
    "soft_labels",
]

#: C&W's (and Papernot et al.'s strongest) distillation temperature.
DEFAULT_TEMPERATURE = 100.0


def _check_temperature(temperature: object) -> float:
    if not is_number(temperature, finite=False):
        raise RobustlabError(f"temperature must be a number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise RobustlabError(f"temperature must be finite and > 0, got {temperature!r}")
    return float(temperature)


@dataclass(frozen=True)
class DistillationOptions:
    """``temperature``: the softmax temperature ``T`` of both stages; 100 as in C&W's
    ``train_distillation`` and Papernot et al.'s strongest setting (S&P 2016, Sec. V)."""

    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperature", _check_temperature(self.temperature))


def soft_log_labels(teacher: nn.Module, x: Tensor, temperature: float) -> Tensor:
    """``log softmax(Z_teacher(x) / T)`` in float64, ``[N, K]``; no gradient, teacher in eval mode
    (its mode is restored). Computed with ``log_softmax``, so nothing underflows to ``log 0``."""
    temperature = _check_temperature(temperature)
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            logits = teacher(x)
    finally:
        teacher.train(was_training)
    return F.log_softmax(logits.double() / temperature, dim=1)


def soft_labels(
    teacher: nn.Module, x: Tensor, *, temperature: float = DEFAULT_TEMPERATURE, batch_size: int = 512
) -> Tensor:
    """The teacher's soft labels ``softmax(Z / T)`` on ``x [N, ...]``: float32 ``[N, K]``, rows sum
    to 1. Computed as ``exp(log_softmax)`` in float64 and batched; the teacher's mode is kept.
    Higher ``T`` gives smoother (higher-entropy) labels; ``T = 1`` gives the ordinary softmax."""
    if x.shape[0] == 0:
        raise RobustlabError("soft_labels needs at least one input")
    parts = [soft_log_labels(teacher, x[i : i + batch_size], temperature).exp() for i in range(0, len(x), batch_size)]
    return torch.cat(parts).float()


@dataclass(frozen=True)
class DistillationStudentOptions(DistillationOptions):
    """The temperature and ``teacher``: the trained teacher, a robustlab checkpoint path or
    ``zoo:NAME`` (None: the teacher module is passed to the method, as :func:`distill` does)."""

    teacher: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher is not None and (not isinstance(self.teacher, str) or not self.teacher):
            raise RobustlabError(f"the distillation student's teacher must be a checkpoint path or zoo:NAME, got "
                                 f"{self.teacher!r}")


def load_teacher(spec: str, temperature: float) -> nn.Module:
    """The saved teacher ``spec`` (checkpoint path or ``zoo:NAME``) on the CPU, in eval mode, its
    parameters frozen; refused when its card says it was trained by ``"distillation-teacher"`` at
    a temperature other than ``temperature``."""
    from robustlab.models.loading import resolve_model

    teacher, card = resolve_model(spec)
    config = (card.training or {}).get("config") or {}
    if config.get("method") == DistillationTeacherMethod.name:
        trained_at = (config.get("method_options") or {}).get("temperature", DEFAULT_TEMPERATURE)
        if float(trained_at) != temperature:
            raise RobustlabError(f"the teacher {spec} was trained at temperature {trained_at:g}; the student's is "
                                 f"{temperature:g} (defensive distillation uses one T for both stages)")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


class DistillationTeacherMethod(TrainingMethod):
    """Teacher stage: cross-entropy on ``softmax(Z / T)`` with the hard labels.

    The returned logits are ``Z / T`` (the argmax, and so the reported accuracy, is the same as
    at ``T = 1``). Cost per batch: 1 forward and 1 backward pass.
    """

    name = "distillation-teacher"
    Options = DistillationOptions

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        logits = model(x_train) / self.options.temperature
        return LossOutput(F.cross_entropy(logits, batch.y), logits)


class DistillationStudentMethod(TrainingMethod):
    """Student stage: soft-label cross-entropy ``-sum_k p_k log softmax(Z / T)_k`` against the
    frozen teacher's ``p = softmax(Z_teacher / T)`` (computed in float64 from ``log_softmax``).

    Built by :func:`distill` with its ``teacher`` module, or from the option ``teacher`` (a saved
    teacher, see :func:`load_teacher`). The teacher runs in eval mode without gradient; its
    parameters are never updated. Cost per batch: 1 forward and 1 backward pass of the student,
    1 forward pass of the teacher.
    """

    name = "distillation-student"
    Options = DistillationStudentOptions

    def __init__(self, config: TrainConfig, *, device: str | torch.device = "cpu",
                 teacher: nn.Module | None = None) -> None:
        super().__init__(config, device=device)
        saved = self.options.teacher
        if teacher is not None and saved is not None:
            raise RobustlabError(f"the 'distillation-student' method got a teacher module and the option "
                                 f"teacher={saved!r}; give one")
        if teacher is None and saved is None:
            raise RobustlabError(
                "the 'distillation-student' method needs a teacher: the option teacher=PATH (a saved "
                "teacher, or zoo:NAME), or robustlab.training.distill(teacher, student, ...)"
            )
        self.teacher = teacher if teacher is not None else load_teacher(saved, self.options.temperature).to(self.device)

    def loss(self, model: nn.Module, x_train: Tensor, batch: Batch) -> LossOutput:
        temperature = self.options.temperature
        target = soft_log_labels(self.teacher, x_train, temperature).exp().to(x_train.dtype)
        logits = model(x_train) / temperature
        loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        return LossOutput(loss, logits)


METHODS.add(DistillationTeacherMethod)
METHODS.add(DistillationStudentMethod)


@dataclass
class DistillationResult:
    """``teacher`` / ``student``: the :class:`TrainResult` of each stage; ``temperature``;
    ``teacher_model`` / ``student_model``: the trained models (the ones passed in, trained in
    place; both left in eval mode). Deploy ``student_model`` as is: its raw logits are ``T = 1``."""

    teacher: TrainResult
    student: TrainResult
    temperature: float
    teacher_model: nn.Module
    student_model: nn.Module


def distill(
    teacher_model: nn.Module,
    student_model: nn.Module,
    train_x: Tensor,
    train_y: Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    config: TrainConfig,
    student_config: TrainConfig | None = None,
    val_x: Tensor | None = None,
    val_y: Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
    shared_init: bool = True,
    train_teacher: bool = True,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> DistillationResult:
    """Defensive distillation: train ``teacher_model`` at temperature ``T``, then
    ``student_model`` on the teacher's soft labels at ``T``; both in place, with :func:`train`.

    ``train_x [N, ...]`` in the models' input box, ``train_y [N]`` integer labels (the student
    never sees them; they only report its training accuracy). ``config`` is used for both stages
    with ``method`` replaced by ``"distillation-teacher"`` / ``"distillation-student"`` and
    ``method_options`` by ``{"temperature": temperature}`` (``student_config`` overrides it for
    the student). Validation accuracy is measured on the
    raw logits, i.e. at ``T = 1``, which is how the student is deployed.

    ``shared_init``: copy the teacher's initial weights into the student first (C&W start both
    from one initialisation; their code also pre-trains it for one epoch, which we leave to the
    caller). Needs the two models to have the same architecture. ``train_teacher=False`` uses
    ``teacher_model`` as already trained (e.g. loaded from a cache) and only trains the student.

    ``checkpoint_dir``: stage checkpoints go to ``<dir>/teacher`` and ``<dir>/student``; a killed
    run resumes each stage where it stopped (see :func:`train`).

    Cost: the teacher's training plus the student's, with one extra teacher forward per student
    batch. Expect the student's logits to be about ``T`` times larger than a natural model's
    (:func:`logit_norms`); see the module docstring for what that does to attacks.
    """
    temperature = _check_temperature(temperature)
    if not isinstance(config, TrainConfig):
        raise RobustlabError(f"config must be a TrainConfig, got {type(config).__name__}")
    if student_config is not None and not isinstance(student_config, TrainConfig):
        raise RobustlabError(f"student_config must be a TrainConfig, got {type(student_config).__name__}")
    if teacher_model is student_model:
        raise RobustlabError("teacher_model and student_model must be two distinct modules")
    if shared_init and train_teacher:
        try:
            student_model.load_state_dict(copy.deepcopy(teacher_model.state_dict()))
        except RuntimeError as exc:
            raise RobustlabError(
                f"shared_init needs teacher and student of the same architecture ({exc}); pass shared_init=False"
            ) from None
    root = None if checkpoint_dir is None else Path(checkpoint_dir)
    teacher_model.to(device)
    options = {"temperature": temperature}
    if train_teacher:
        teacher_result = train(
            teacher_model, train_x, train_y,
            config=replace(config, method="distillation-teacher", method_options=options),
            val_x=val_x, val_y=val_y, checkpoint_dir=None if root is None else root / "teacher",
            progress=progress, device=device,
        )
    else:
        teacher_result = TrainResult(history=[], best_epoch=0, best_val_acc=None)
    teacher_model.eval()
    frozen = [p.requires_grad for p in teacher_model.parameters()]
    for p in teacher_model.parameters():
        p.requires_grad_(False)
    try:
        student_train_config = replace(student_config or config, method="distillation-student", method_options=options)
        student_result = train(
            student_model, train_x, train_y, config=student_train_config,
            method=DistillationStudentMethod(student_train_config, device=device, teacher=teacher_model),
            val_x=val_x, val_y=val_y, checkpoint_dir=None if root is None else root / "student",
            progress=progress, device=device,
        )
    finally:
        for p, flag in zip(teacher_model.parameters(), frozen):
            p.requires_grad_(flag)
    return DistillationResult(teacher_result, student_result, temperature, teacher_model.eval(), student_model.eval())


def logit_norms(model: nn.Module, x: Tensor, *, p: float = 1.0, batch_size: int = 512) -> Tensor:
    """Per-sample ``||Z(x)||_p`` (float64 ``[N]``) of the model's raw logits, in eval mode (the
    model's mode is restored). C&W's check for distilled networks uses the mean ``p = 1`` norm."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [model(x[i : i + batch_size]).double().norm(p=p, dim=1) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
