"""The attack template (robustlab.attacks.base) pinned piece by piece (issue 15), on hand-built
models: the margin and success criterion, the oracle's counters and gradients, target
resolution, the input, logit and start checks, the float16 projection, and what a call returns."""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.base import (
    Attack,
    AttackResult,
    ModelOracle,
    check_call,
    check_inputs,
    check_logits,
    check_start,
    difference_of_logits,
    is_adversarial,
    project_rounding_inward,
    resolve_targets,
)
from robustlab.documentation import docs_pointer
from robustlab.errors import ProbabilityOutputWarning, RobustlabError
from robustlab.threat import L2, Linf

pytestmark = pytest.mark.usefixtures("single_thread")

LOGITS = torch.tensor([[3.0, 1.0, 2.0, -1.0], [0.0, 5.0, 4.0, 4.5], [1.0, 1.0, 0.0, 2.0]])


def test_difference_of_logits_and_success_by_hand():
    y = torch.tensor([0, 2, 1])
    # Untargeted: Z_y - max_{j != y} Z_j.
    assert difference_of_logits(LOGITS, y).tolist() == [1.0, -1.0, -1.0]
    # Targeted: max_{j != t} Z_j - Z_t.
    t = torch.tensor([2, 1, 3])
    assert difference_of_logits(LOGITS, y, t).tolist() == [1.0, -0.5, -1.0]
    assert is_adversarial(LOGITS, y).tolist() == [False, True, True]
    assert is_adversarial(LOGITS, y, t).tolist() == [False, True, True]
    assert is_adversarial(LOGITS, y, torch.tensor([1, 3, 0])).tolist() == [False, False, False]
    with pytest.raises(RobustlabError, match="^this attack needs a model with at least 2 classes, got 1$"):
        difference_of_logits(LOGITS[:, :1], torch.zeros(3, dtype=torch.long))


class _Quadratic(nn.Module):
    """Logits ``[x . w_k + (x . x) * k]``: gradients known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]], dtype=torch.float64))

    def forward(self, x):
        x = x.flatten(1)
        return x @ self.w.T + (x * x).sum(1, keepdim=True) * torch.arange(3, dtype=x.dtype)


def test_oracle_counts_per_sample_and_returns_each_samples_gradient():
    model, oracle = _Quadratic(), None
    oracle = ModelOracle(model)
    x = torch.tensor([[0.5, 1.0], [2.0, -1.0], [0.0, 0.25]], dtype=torch.float64)
    z = oracle.logits(x)
    assert not z.requires_grad and (oracle.forwards, oracle.backwards) == (3, 0)
    losses, grads, logits = oracle.losses_and_grads(x, (lambda z: z[:, 0], lambda z: z[:, 2] * z[:, 1]))
    assert (oracle.forwards, oracle.backwards) == (6, 6)
    torch.testing.assert_close(logits, z)
    w = model.w.detach()
    torch.testing.assert_close(losses[0], z[:, 0])
    torch.testing.assert_close(grads[0], w[0].expand(3, 2))
    # d(z2 z1)/dx = z1 (w2 + 4 x) + z2 (w1 + 2 x)
    expected = z[:, 1:2] * (w[2] + 4 * x) + z[:, 2:3] * (w[1] + 2 * x)
    torch.testing.assert_close(grads[1], expected)
    assert not any(g.requires_grad for g in grads) and not losses[1].requires_grad
    loss, grad, _ = oracle.loss_and_grad(x, lambda z: z[:, 1])
    torch.testing.assert_close(grad, w[1] + 2 * x)
    assert (oracle.forwards, oracle.backwards) == (9, 9)
    # Inside no_grad too (attacks are often called there).
    with torch.no_grad():
        _, (g,), _ = oracle.losses_and_grads(x, (lambda z: z[:, 0],))
    torch.testing.assert_close(g, w[0].expand(3, 2))


def test_resolve_targets_modes_by_hand():
    y = torch.tensor([0, 2, 1])
    assert resolve_targets(None, LOGITS, y) is None
    assert resolve_targets("least-likely", LOGITS, y).tolist() == [3, 0, 2]
    assert resolve_targets("most-confusing", LOGITS, y).tolist() == [2, 1, 3]
    # Random: (y + U{1, ..., K - 1}) mod K, from the generator: uniform over the wrong classes.
    y_many = torch.arange(4).repeat(500)
    logits = torch.zeros(2000, 4)
    t = resolve_targets("random", logits, y_many, torch.Generator().manual_seed(3))
    offset = torch.randint(1, 4, (2000,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, (y_many + offset) % 4)
    counts = torch.bincount((t - y_many) % 4, minlength=4)
    assert counts[0] == 0 and (counts[1:] > 600).all()
    empty = resolve_targets("random", torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)
    with pytest.raises(RobustlabError, match="^random targets need at least 2 classes$"):
        resolve_targets("random", torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    # Two classes: the other one.
    assert resolve_targets("random", torch.zeros(3, 2), torch.tensor([0, 1, 1])).tolist() == [1, 0, 0]
    # Drawn on the labels' device ("meta" here: a CPU draw added to them is an error there).
    meta = resolve_targets("random", torch.empty(3, 4, device="meta"), torch.zeros(3, dtype=torch.long, device="meta"))
    assert meta.device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_given_targets_of_any_integer_dtype_become_int64(dtype):
    y = torch.tensor([0, 2, 1])
    t = resolve_targets(torch.tensor([3, 0, 0], dtype=dtype), LOGITS, y)
    assert t.dtype == torch.int64 and t.tolist() == [3, 0, 0]
    assert resolve_targets([3, 0, 0], LOGITS, y).tolist() == [3, 0, 0]  # a list is taken as a tensor


@pytest.mark.parametrize("targets, words", [
    (torch.tensor([1.0, 0.0, 0.0]), "^targets must be integer class indices, got dtype torch.float32$"),
    (torch.tensor([True, False, False]), "^targets must be integer class indices, got dtype torch.bool$"),
    (torch.tensor([1, 0]), r"^targets must have shape \(3,\), got \(2,\)$"),
    (torch.tensor([[1, 0, 0]]), r"^targets must have shape \(3,\), got \(1, 3\)$"),
    (torch.tensor([4, 0, 0]), r"^targets must lie in \[0, 4\); got values in \[0, 4\]$"),
    (torch.tensor([1, -1, 0]), r"^targets must lie in \[0, 4\); got values in \[-1, 1\]$"),
    (torch.tensor([1, 2, 0]), "^a target equals the true label for some samples; targeted attacks need t != y$"),
    ("most-likely", r"^unknown target mode 'most-likely'; give a tensor of classes or one of "
                    r"\('least-likely', 'most-confusing', 'random'\)$"),
])
def test_given_targets_are_checked(targets, words):
    with pytest.raises(RobustlabError, match=words):
        resolve_targets(targets, LOGITS, torch.tensor([0, 2, 1]))


def test_empty_targets_pass_the_checks():
    t = resolve_targets(torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert t.shape == (0,)


def test_check_call_refuses_inference_mode_and_another_dtype():
    model = nn.Linear(2, 3)
    x = torch.rand(4, 2)
    assert check_call(model, x) is x
    with torch.inference_mode():
        made = torch.rand(4, 2)
    out = check_call(model, made)
    assert not out.is_inference() and torch.equal(out, made)
    with torch.inference_mode(), pytest.raises(RobustlabError, match=r"^called under torch\.inference_mode\(\), where no gradient.*where it needs them\)$"):
        check_call(model, x)
    with pytest.raises(RobustlabError, match=r"^x has dtype torch.float64 but the model's parameters are torch.float32; cast one to the other "
                       r"\(x.to\(torch.float32\) or model.to\(torch.float64\)\).*centred on$"):
        check_call(model, x.double())
    # A model with parameters of two dtypes, or none, is not second-guessed; nor are integer inputs.
    mixed = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3).double())
    assert check_call(mixed, x.double()).dtype == torch.float64
    assert check_call(nn.Flatten(), x.double()).dtype == torch.float64
    assert check_call(model, torch.ones(4, 2, dtype=torch.long)).dtype == torch.long


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("threat", [Linf(eps=0.1), L2(eps=0.3)])
def test_low_precision_projection_rounds_towards_x(dtype, threat):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4, generator=g).to(dtype)
    wild = (x.float() + 0.5 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    out = project_rounding_inward(threat, x, wild.to(dtype))
    assert out.dtype == dtype
    projected = threat.project(x.float(), wild.to(dtype).float())
    # Every coordinate at most as far from x as float32's projection, and within one rounding step of it;
    # exactly: the projection rounded to the dtype, moved one step towards x where rounding went outward.
    assert ((out.float() - x.float()).abs() <= (projected - x.float()).abs()).all()
    rounded = projected.to(dtype)
    outward = (rounded.float() - x.float()).abs() > (projected - x.float()).abs()
    assert torch.equal(out, torch.where(outward, torch.nextafter(rounded, x), rounded))
    assert outward.any() and (~outward).any() and (rounded.float() == projected).any()
    step = torch.finfo(dtype).eps * projected.abs().clamp_min(1e-3)
    assert ((out.float() - projected).abs() <= 2 * step).all()
    assert threat.contains(x.float(), out.float()).all()
    # A plain round trip would overshoot eps for some samples (that is why it rounds inward).
    naive = projected.to(dtype).float()
    assert (threat.distance(x.float(), naive) > threat.eps).any()
    # float32 and float64 are projected as they are.
    x64 = x.double()
    torch.testing.assert_close(project_rounding_inward(threat, x64, wild.double()), threat.project(x64, wild.double()))


def test_check_inputs_clamps_float_noise_and_returns_int64_labels():
    threat = Linf(eps=0.1, bounds=(-1.0, 2.0))
    x = torch.tensor([[-1.0 - 0.9e-5, 0.0], [1.0, 2.0 + 0.9e-5]])
    cx, cy = check_inputs(x, torch.tensor([1, 0], dtype=torch.int32), threat)
    assert cx.tolist() == [[-1.0, 0.0], [1.0, 2.0]] and cy.dtype == torch.int64 and cy.tolist() == [1, 0]
    for bad, values in ((-1.0 - 1.1e-5, "[-1, 0]"), (2.0 + 1.1e-5, "[0, 2]")):
        message = (f"x lies outside the threat model's bounds (-1.0, 2.0): values in {values}. Inputs must be in the "
                   "model's input domain; put mean/std normalization inside the model (robustlab.models.Normalize)")
        with pytest.raises(RobustlabError, match=f"^{re.escape(message)}$"):
            check_inputs(torch.tensor([[0.0, bad]]), torch.tensor([0]), threat)
    # Empty batches pass.
    cx, cy = check_inputs(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), threat)
    assert cx.shape == (0, 3) and cy.shape == (0,)


@pytest.mark.parametrize("x, y, threat, words", [
    (torch.rand(2, 3), torch.tensor([0, 1]), "Linf",
     r"^threat must be a robustlab\.threat\.ThreatModel with a budget, e\.g\. Linf\(eps=0\.3\) or "
     r"robustlab\.threat\.threat_model\('Linf', eps\), not the string 'Linf'$"),
    (torch.rand(2, 3), torch.tensor([0, 1]), 0.1, r"^threat must be a robustlab\.threat\.ThreatModel, got float$"),
    (torch.rand(2, 3).tolist(), torch.tensor([0, 1]), Linf(eps=0.1), "^x and y must be torch tensors$"),
    (torch.rand(2, 3), [0, 1], Linf(eps=0.1), "^x and y must be torch tensors$"),
    (torch.ones(2, 3, dtype=torch.long), torch.tensor([0, 1]), Linf(eps=0.1),
     r"^x must be a floating-point tensor, got dtype torch.int64 \(scale integer images to \(0.0, 1.0\)\)$"),
    (torch.rand(3), torch.tensor([0, 1, 2]), Linf(eps=0.1),
     r"^x must be a batch \[N, \.\.\.\] with at least 2 dimensions, got shape \(3,\)$"),
    (torch.rand(2, 3), torch.tensor([[0, 1]]), Linf(eps=0.1), r"^y must have shape \[2\] \(one label per input.*, got \(1, 2\)$"),
    (torch.rand(2, 3), torch.tensor([0, 1, 1]), Linf(eps=0.1), r"^y must have shape \[2\] .*the same N\), got \(3,\)$"),
    (torch.rand(2, 3), torch.tensor([0.0, 1.0]), Linf(eps=0.1),
     r"^y must hold integer class indices \(labels\), got dtype torch.float32$"),
    (torch.rand(2, 3), torch.tensor([0j, 1j]), Linf(eps=0.1), "integer class indices"),
    (torch.rand(2, 3), torch.tensor([True, False]), Linf(eps=0.1), "integer class indices"),
    (torch.rand(2, 3), torch.tensor([0, -2]), Linf(eps=0.1),
     r"^labels must lie in \[0, number of classes\); got a negative label -2$"),
    (torch.tensor([[0.5, math.nan]]), torch.tensor([0]), Linf(eps=0.1), "^x contains NaN or inf$"),
    (torch.tensor([[0.5, -math.inf]]), torch.tensor([0]), Linf(eps=0.1), "^x contains NaN or inf$"),
])
def test_check_inputs_names_the_problem(x, y, threat, words):
    with pytest.raises(RobustlabError, match=words):
        check_inputs(x, y, threat)


def test_check_logits_names_the_problem():
    y = torch.tensor([0, 2, 1])
    check_logits(LOGITS, y)
    check_logits(LOGITS, y, 4)
    with pytest.raises(RobustlabError, match=r"^the model must return logits of shape \[N, K\], got \(3, 4, 1\)$"):
        check_logits(LOGITS[:, :, None], y)
    with pytest.raises(RobustlabError, match=r"^the model has 4 outputs but num_classes is 5: .*number of classes$"):
        check_logits(LOGITS, y, 5)
    with pytest.raises(RobustlabError, match=r"^labels must lie in \[0, 4\) for a model with 4 outputs; got \[0, 4\]$"):
        check_logits(LOGITS, torch.tensor([0, 4, 1]))
    with pytest.raises(RobustlabError, match=r"^labels must lie in \[0, 4\) for a model with 4 outputs; got \[-1, 2\]$"):
        check_logits(LOGITS, torch.tensor([0, 2, -1]))
    nan = LOGITS.clone()
    nan[1, 2] = nan[2, 0] = math.nan
    with pytest.raises(RobustlabError, match=r"^the model returned NaN logits for 2 of 3 inputs \(first at position 1\); a NaN row has no "
                       r"predicted class$"):
        check_logits(nan, y)
    with pytest.raises(RobustlabError, match="returns a tuple of 1 items"):
        check_logits((LOGITS,), y)
    check_logits(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def _entry_point(logits):  # like Attack.__call__: check_logits is called one level below the user's call
    check_logits(logits, torch.tensor([0, 2, 1]))


@pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ, reason="mutmut's trampolines add stack frames")
def test_probability_warning_points_at_the_users_call():
    message = ("the model's outputs look like probabilities (non-negative rows summing to 1); attacks and losses "
               "expect logits: remove the final softmax. Margin-based losses saturate on probabilities and make the "
               f"model look robust. See `{docs_pointer('diagnostics', 'probabilities')}`")
    with pytest.warns(ProbabilityOutputWarning, match=f"^{re.escape(message)}$") as record:
        _entry_point(LOGITS.softmax(1)); line = inspect.currentframe().f_lineno  # noqa: E702
    assert (record[0].filename, record[0].lineno) == (__file__, line)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_logits(LOGITS, torch.tensor([0, 2, 1]))


def test_check_start_names_the_problem():
    threat = Linf(eps=0.1)
    x = torch.full((3, 2), 0.5)
    start = x + torch.tensor([[0.1], [-0.05], [0.0]])
    out = check_start(x, start.requires_grad_(), threat)
    assert not out.requires_grad and torch.equal(out, start)
    shape = r"^start must have x's shape, dtype and device \(3, 2\), torch.float32, cpu; got "
    for bad, words in ((start.detach().tolist(), "^start must be a tensor like x, got list$"),
                       (x[:2], shape + r"\(2, 2\), torch.float32, cpu$"),
                       (x.double(), shape + r"\(3, 2\), torch.float64, cpu$"),
                       (x.index_put((torch.tensor(1),), torch.tensor(math.nan)), "^start holds NaN or infinite values$"),
                       (x + torch.tensor([[0.0], [0.2], [-0.2]]),
                        r"^start lies outside Linf\(eps=0.1.*\) around x for 2 of 3 samples$")):
        with pytest.raises(RobustlabError, match=words):
            check_start(x, bad, threat)


# --- the template: what a call returns ------------------------------------------------------


class _TwoClass(nn.Module):
    """z = [0, 10 * (x_0 - 0.5)] on [N, 2] inputs, in train mode with a Dropout that would break
    reproducibility, one parameter that needs a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0, dtype=torch.float64))
        self.drop = nn.Dropout(0.9)
        self.train()

    def forward(self, x):
        z = self.drop(self.scale * (x[:, :1] - 0.5))
        return torch.cat([torch.zeros_like(z), z], dim=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Push(Attack):
    """Moves the first feature by ``shift`` (out of the threat set when large: the template projects)."""

    name = "push-test"
    norms = frozenset({"Linf", "L2"})
    takes_start = True
    shift: float = 0.3
    tag: Any = None
    seen: list = dataclasses.field(default_factory=list, compare=False)

    def _run(self, oracle, x, y, *, threat, targets, generator, start=None):
        self.seen.append({"training": oracle.model.training, "grad": next(oracle.model.parameters()).requires_grad,
                          "targets": targets, "start": start, "x": x})
        oracle.logits(x)
        x_adv = x.clone() if start is None else start.clone()
        x_adv[:, 0] += self.shift
        return x_adv, {"ran": True}


@dataclasses.dataclass(frozen=True, kw_only=True)
class _PushWithLoss(_Push):
    @staticmethod
    def loss_fn(logits, y, targets):
        return F.cross_entropy(logits, y if targets is None else targets, reduction="none")


def test_call_projects_recomputes_success_and_fills_the_result():
    model = _TwoClass()
    x = torch.tensor([[0.46, 0.2], [0.3, 0.9], [0.55, 0.5]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    attack = _Push(shift=0.3)
    result = attack(model, x, y, threat=Linf(eps=0.1))
    # _run ran in eval mode with frozen parameters; the model is back in train mode after.
    assert attack.seen[-1]["training"] is False and attack.seen[-1]["grad"] is False
    assert model.training and model.scale.requires_grad
    expected = x.clone()
    expected[:, 0] += 0.1  # projected onto the ball
    torch.testing.assert_close(result.x_adv, expected)
    z = torch.cat([torch.zeros(3, 1, dtype=torch.float64), 10 * (expected[:, :1] - 0.5)], dim=1)
    assert result.success.tolist() == [True, False, False]
    assert result.predictions.tolist() == [1, 0, 1]
    torch.testing.assert_close(result.margin, difference_of_logits(z, y))
    torch.testing.assert_close(result.distance, torch.full((3,), 0.1, dtype=torch.float64))
    assert result.loss.isnan().all() and result.targets is None
    assert (result.forwards, result.backwards) == (9, 0)  # clean pass, _run's pass, final pass
    assert result.extras == {"ran": True} and len(result) == 3 and result.success_rate == pytest.approx(1 / 3)
    # With a loss: the final loss is the attack's loss at x_adv; targeted success is the target.
    targeted = _PushWithLoss(shift=0.3)(model, x, y, threat=L2(eps=0.05), targets=torch.tensor([1, 1, 0]))
    expected = x.clone()
    expected[:, 0] += 0.05
    torch.testing.assert_close(targeted.x_adv, expected)
    z = torch.cat([torch.zeros(3, 1, dtype=torch.float64), 10 * (expected[:, :1] - 0.5)], dim=1)
    torch.testing.assert_close(targeted.loss, F.cross_entropy(z, torch.tensor([1, 1, 0]), reduction="none"))
    assert targeted.success.tolist() == [True, False, False] and targeted.targets.tolist() == [1, 1, 0]
    torch.testing.assert_close(targeted.margin, difference_of_logits(z, y, torch.tensor([1, 1, 0])))


def test_call_passes_start_and_targets_and_handles_empty_batches():
    model = _TwoClass()
    x = torch.tensor([[0.45, 0.2], [0.3, 0.9]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    attack = _Push(shift=0.0)
    start = x + 0.05
    result = attack(model, x, y, threat=Linf(eps=0.1), start=start, targets="most-confusing")
    assert torch.equal(attack.seen[-1]["start"], start) and attack.seen[-1]["targets"].tolist() == [1, 1]
    torch.testing.assert_close(result.x_adv, start)
    # Without start, _run gets no start argument at all (attacks without the keyword still work).
    attack(model, x, y, threat=Linf(eps=0.1))
    assert attack.seen[-1]["start"] is None
    empty = attack(model, x[:0], y[:0], threat=Linf(eps=0.1))
    assert empty.x_adv.shape == (0, 2) and len(attack.seen) == 2 and math.isnan(empty.success_rate)
    assert empty.extras == {}
    with torch.inference_mode():
        y_inference = torch.tensor([0, 0])
    assert attack(model, x, y_inference, threat=Linf(eps=0.1)).success.shape == (2,)
    # Random targets come from the call's generator.
    result = attack(model, torch.rand(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
                    torch.zeros(50, dtype=torch.long), threat=Linf(eps=0.1), targets="random",
                    generator=torch.Generator().manual_seed(4))
    offset = torch.randint(1, 2, (50,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(result.targets, offset % 2)
    model3 = nn.Sequential(nn.Linear(2, 3)).double()
    result = _Push(shift=0.0)(model3, x.repeat(20, 1), torch.zeros(40, dtype=torch.long), threat=Linf(eps=0.1),
                              targets="random", generator=torch.Generator().manual_seed(4))
    offset = torch.randint(1, 3, (40,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(result.targets, offset % 3) and len(set(result.targets.tolist())) == 2
    # The margin of a targeted result is the targeted one (3 classes: not the untargeted one).
    with torch.no_grad():
        z = model3(result.x_adv)
    torch.testing.assert_close(result.margin, difference_of_logits(z, torch.zeros(40, dtype=torch.long), result.targets))
    assert not torch.allclose(result.margin, difference_of_logits(z, torch.zeros(40, dtype=torch.long)))
    # The call checks x's dtype against the model's before anything else.
    with pytest.raises(RobustlabError, match="^x has dtype torch.float32 but the model's parameters are torch.float64"):
        attack(model, x.float(), y, threat=Linf(eps=0.1))


def test_call_refuses_a_start_it_cannot_take_and_a_norm_it_does_not_support():
    model = _TwoClass()
    x = torch.tensor([[0.45, 0.2]], dtype=torch.float64)
    y = torch.tensor([0])

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class NoStart(_Push):
        takes_start = False

    with pytest.raises(RobustlabError, match=r"^NoStart does not take start points \(start=\.\.\.\)$"):
        NoStart()(model, x, y, threat=Linf(eps=0.1), start=x)
    with pytest.raises(RobustlabError, match="outside"):
        _Push()(model, x, y, threat=Linf(eps=0.1), start=x + 0.2)
    with pytest.raises(RobustlabError, match=r"^_Push supports the norms \['L2', 'Linf'\], not L1$"):
        from robustlab.threat import L1
        _Push()(model, x, y, threat=L1(eps=0.1))


def test_call_refuses_an_attack_whose_points_leave_the_threat_set():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Broken(_Push):
        def _run(self, oracle, x, y, *, threat, targets, generator, start=None):
            return x + 1.0, {}

    class Unprojected(Linf):
        def project(self, x, x_adv):
            return x_adv

    x = torch.tensor([[0.45, 0.2]], dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"^Broken produced points outside Linf\(eps=0\.1, bounds=\(0\.0, 5\.0\)\) after projection "
                                          r"\(max distance 1\); this is a bug in the attack$") as info:
        Broken()(_TwoClass(), x, torch.tensor([0]), threat=Unprojected(eps=0.1, bounds=(0.0, 5.0)))
    assert "Broken produced points" in str(info.value)


def test_low_precision_result_distance_is_computed_in_float32():
    model = nn.Sequential(nn.Linear(2, 2)).half()
    x = torch.tensor([[0.4, 0.2], [0.7, 0.3]], dtype=torch.float16)
    result = _Push(shift=0.3)(model, x, torch.tensor([0, 1]), threat=Linf(eps=0.1))
    assert result.distance.dtype == torch.float32 and result.x_adv.dtype == torch.float16
    assert (result.distance <= 0.1).all() and (result.distance > 0.09).all()


def test_config_is_json_friendly_and_result_defaults():
    config = _Push(shift=0.25, tag=(1, 2)).config()
    assert config["attack"] == "push-test" and config["shift"] == 0.25 and config["tag"] == "(1, 2)"
    assert config["seen"] == "[]"
    assert _Push(tag=None).config()["tag"] is None and _Push(tag="a").config()["tag"] == "a"
    assert _Push(tag=True).config()["tag"] is True and _Push(tag=3).config()["tag"] == 3
    result = AttackResult(x_adv=torch.zeros(2, 1), success=torch.tensor([True, False]), distance=torch.zeros(2),
                          loss=torch.zeros(2), predictions=torch.zeros(2))
    assert (result.forwards, result.backwards, result.extras, result.margin, result.targets) == (0, 0, {}, None, None)
    assert result.success_rate == 0.5
    assert _Push()._final_loss(torch.empty(3, 2, device="meta"), None, None).device.type == "meta"
    with pytest.raises(NotImplementedError):
        Attack._run(_Push(), None, None, None, threat=None, targets=None, generator=None)
    assert (Attack.name, Attack.norms, Attack.minimum_norm, Attack.takes_start) == ("", frozenset(), False, False)
