"""Defensive distillation: soft labels, the two training methods, and what distillation does (and
does not do) to attacks (Carlini & Wagner, S&P 2017, Sec. VIII)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlab.attacks import build_attack
from robustlab.errors import RobustlabError
from robustlab.threat import threat_model
from robustlab.training import (
    METHODS,
    TrainConfig,
    distill,
    logit_norms,
    soft_labels,
    train,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TEMPERATURE = 100.0


def _mlp(seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _config(**overrides) -> TrainConfig:
    # Adam: the 1/T factor in the tempered loss's gradient does not slow it down, unlike SGD.
    values = {"epochs": 30, "batch_size": 50, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "schedule": "constant",
              "seed": 0}
    return TrainConfig(**{**values, **overrides})


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


@pytest.fixture(scope="module")
def distilled(digits):
    x_train, y_train, x_test, y_test = digits
    with torch.random.fork_rng():
        result = distill(_mlp(0), _mlp(1), x_train, y_train, temperature=TEMPERATURE, config=_config(),
                         val_x=x_test, val_y=y_test)
    return result


def test_methods_are_registered():
    assert {"distillation-teacher", "distillation-student"} <= set(METHODS)
    TrainConfig(method="distillation-teacher")


def test_soft_labels_sum_to_one_and_are_smoother_at_higher_temperature(digits, digits_mlp):
    x = digits[2][:64]
    entropies = []
    for temperature in (1.0, 10.0, 100.0):
        p = soft_labels(digits_mlp, x, temperature=temperature)
        assert p.shape == (64, 10) and p.dtype == torch.float32
        assert torch.allclose(p.sum(dim=1), torch.ones(64), atol=1e-5)
        assert (p >= 0).all()
        entropies.append(float(-(p.double() * p.double().clamp_min(1e-300).log()).sum(dim=1).mean()))
    assert entropies[0] < entropies[1] < entropies[2] <= math.log(10) + 1e-6
    assert not digits_mlp.training


def test_soft_labels_do_not_underflow_on_huge_logits():
    huge = nn.Linear(4, 3)
    with torch.no_grad():
        huge.weight.copy_(torch.tensor([[1e4, 0, 0, 0], [0, 1e4, 0, 0], [0, 0, 0, 0]]))
        huge.bias.zero_()
    p = soft_labels(huge, torch.eye(4), temperature=1.0)
    assert torch.isfinite(p).all() and torch.allclose(p.sum(dim=1), torch.ones(4))


def test_student_method_needs_a_teacher(digits):
    x_train, y_train, _, _ = digits
    with pytest.raises(RobustlabError, match="teacher"):
        train(_mlp(0), x_train[:50], y_train[:50], config=_config(epochs=1, method="distillation-student"))


def test_bad_temperature_is_rejected(digits):
    x_train, y_train, _, _ = digits
    with pytest.raises(RobustlabError, match="temperature"):
        distill(_mlp(0), _mlp(1), x_train, y_train, temperature=0, config=_config(epochs=1))


def test_distilled_student_is_accurate_at_t1_with_huge_logits(distilled, digits, digits_mlp):
    _, _, x_test, y_test = digits
    student = distilled.student_model
    assert not student.training
    assert distilled.student.history[-1]["val_acc"] == pytest.approx(_accuracy(student, x_test, y_test))
    assert _accuracy(student, x_test, y_test) > 0.85
    natural, distilled_norm = logit_norms(digits_mlp, x_test).mean(), logit_norms(student, x_test).mean()
    # C&W: mean ||Z||_1 of 482 distilled vs 5.8 undistilled on MNIST; here >= 10x.
    assert distilled_norm > 10 * natural


def test_distillation_masks_softmax_gradients_but_not_cw(distilled, digits, digits_mlp):
    _, _, x_test, y_test = digits
    x, y = x_test[:30], y_test[:30]
    targets = (y + 1) % 10
    student = distilled.student_model
    l0 = threat_model("L0", math.inf, (0.0, 1.0))
    fgsm = build_attack("fgsm")
    linf = threat_model("Linf", 0.1, (0.0, 1.0))
    # FGSM on the softmax cross-entropy: its gradient underflows to exactly 0 on most inputs.
    assert fgsm(student, x, y, threat=linf).success_rate < fgsm(digits_mlp, x, y, threat=linf).success_rate
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(student(xg), y, reduction="sum"), xg)
    assert (grad.flatten(1).abs().amax(dim=1) == 0).float().mean() > 0.3
    # JSMA-F (saliency on the softmax) stops working.
    jsma_f = build_attack("jsma", variant="f")
    natural_rate = jsma_f(digits_mlp, x, y, threat=l0, targets=targets).success_rate
    distilled_rate = jsma_f(student, x, y, threat=l0, targets=targets).success_rate
    assert natural_rate > 0.8 and distilled_rate < 0.2
    # C&W L2 on the logits is unaffected: unbounded, it still succeeds on (about) every image.
    cw = build_attack("cw-l2", binary_search_steps=9, max_iterations=300, learning_rate=0.1)
    result = cw(student, x, y, threat=threat_model("L2", math.inf, (0.0, 1.0)), targets=targets)
    assert result.success_rate >= 0.95


def test_distill_checkpoints_and_resumes(tmp_path, digits):
    x_train, y_train, _, _ = digits
    x, y = x_train[:200], y_train[:200]
    config = _config(epochs=2)
    first = distill(_mlp(0), _mlp(1), x, y, temperature=20, config=config, checkpoint_dir=tmp_path)
    assert (tmp_path / "teacher" / "last.ckpt").exists() and (tmp_path / "student" / "last.ckpt").exists()
    again = distill(_mlp(0), _mlp(1), x, y, temperature=20, config=config, checkpoint_dir=tmp_path)
    for a, b in zip(first.student_model.state_dict().values(), again.student_model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(RobustlabError, match="temperature"):
        distill(_mlp(0), _mlp(1), x, y, temperature=30, config=config, checkpoint_dir=tmp_path)


def _saved_teacher(tmp_path, digits, temperature: float):
    """A small registered MLP trained as the teacher at ``temperature`` and saved with its card, as
    ``robustlab train --method distillation-teacher`` saves it."""
    from robustlab.models import ModelCard, build_model, save_model

    x_train, y_train, _, _ = digits
    arguments = {"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [32]}
    teacher = build_model("mlp", seed=0, **arguments)
    config = _config(epochs=2, method="distillation-teacher", method_options={"temperature": temperature})
    train(teacher, x_train[:300], y_train[:300], config=config)
    card = ModelCard(architecture="mlp", arguments=arguments, dataset="digits",
                     training={"method": config.method, "config": config.to_dict()})
    save_model(teacher, tmp_path / "teacher", card)
    return tmp_path / "teacher", arguments


def test_student_from_a_saved_teacher_trains_as_distill_does(tmp_path, digits):
    """The option teacher=PATH (how `robustlab train` and the zoo's mnist-distilled run the second
    stage) gives bitwise the student distill() trains from the same teacher module."""
    from robustlab.models import build_model, load_model

    x_train, y_train, _, _ = digits
    path, arguments = _saved_teacher(tmp_path, digits, 20.0)
    config = _config(epochs=2, method="distillation-student", method_options={"temperature": 20.0, "teacher": str(path)})
    from_option = build_model("mlp", seed=0, **arguments)
    train(from_option, x_train[:300], y_train[:300], config=config)
    teacher, _ = load_model(path)
    from_module = distill(teacher, build_model("mlp", seed=0, **arguments), x_train[:300], y_train[:300],
                          temperature=20.0, config=_config(epochs=2), train_teacher=False,
                          shared_init=False).student_model
    for a, b in zip(from_option.state_dict().values(), from_module.state_dict().values()):
        assert torch.equal(a, b)
    # Teeth: the student learnt from the teacher (not left at its initialisation).
    untrained = build_model("mlp", seed=0, **arguments)
    assert not torch.equal(untrained.state_dict()["fc1.weight"], from_option.state_dict()["fc1.weight"])


def test_saved_teacher_of_another_temperature_or_two_teachers_are_refused(tmp_path, digits):
    from robustlab.models import load_model
    from robustlab.training.distillation import DistillationStudentMethod

    x_train, y_train, _, _ = digits
    path, _ = _saved_teacher(tmp_path, digits, 20.0)
    config = _config(epochs=1, method="distillation-student", method_options={"temperature": 100.0, "teacher": str(path)})
    with pytest.raises(RobustlabError, match="trained at temperature 20"):
        DistillationStudentMethod(config)
    same = _config(epochs=1, method="distillation-student", method_options={"temperature": 20.0, "teacher": str(path)})
    with pytest.raises(RobustlabError, match="give one"):
        DistillationStudentMethod(same, teacher=load_model(path)[0])
    with pytest.raises(RobustlabError, match="teacher"):
        _config(method="distillation-student", method_options={"teacher": 3})
