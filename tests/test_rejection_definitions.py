"""The reject option's evaluation pinned to its definitions (defenses-2.md §0 and §1(d)), model-free:
the detector-aware loss against its closed form ``margin - weight * max(0, score - threshold + slack)``,
the adaptive attack's calls, points and costs with a scripted PGD, and the metrics with rejection on a
hand-made table."""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.evaluation import rejection
from robustlab.evaluation.rejection import adaptive_attack, detector_aware_loss, rejection_metrics
from robustlab.threat import Linf


class ToyDetector(nn.Module):
    """Features ``[logit 0, logit 1, logit 2, detector logit]``: the classifier's logits are the first three,
    the detector's logit is the last (``last_score`` of the call); rejected above ``threshold``."""

    def __init__(self, threshold: float = 0.0):
        super().__init__()
        self.threshold = threshold
        self.last_score = None

    def forward(self, x):
        self.last_score = x[:, 3]
        return x[:, :3]

    def reject(self, x):
        return x[:, 3] > self.threshold


def closed_form(logits, y, score, threshold, weight, slack, targets=None):
    out = []
    for i in range(logits.shape[0]):
        cls = int(y[i] if targets is None else targets[i])
        others = max(float(logits[i, j]) for j in range(logits.shape[1]) if j != cls)
        m = others - float(logits[i, cls]) if targets is None else float(logits[i, cls]) - others
        w = float(weight[i]) if isinstance(weight, torch.Tensor) else weight
        out.append(m - w * max(0.0, float(score[i]) - threshold + slack))
    return torch.tensor(out, dtype=torch.float64)


def test_detector_aware_loss_is_the_uncapped_margin_minus_the_weighted_excess():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64) * 5
    logits[0, 1] = 40.0  # a margin far above 0: uncapped (kappa = inf)
    y = torch.tensor([0, 1, 2, 3, 0, 2])
    det = ToyDetector(threshold=0.3)
    # below threshold - slack (no excess), between (an excess under the slack), above
    det.last_score = torch.tensor([-1.0, -0.1, 0.3, 0.9, -0.2, 2.0], dtype=torch.float64)
    for kwargs, weight, slack in [({}, 10.0, 0.5), ({"weight": 2.5, "slack": 0.1}, 2.5, 0.1),
                                  ({"weight": 0}, 0.0, 0.5)]:
        loss = detector_aware_loss(det, **kwargs)
        expected = closed_form(logits, y, det.last_score, 0.3, weight, slack)
        assert torch.allclose(loss(logits, y, None), expected, atol=1e-12), kwargs
    assert float(closed_form(logits, y, det.last_score, 0.3, 10.0, 0.5)[0]) > 30  # not capped at 0
    per_sample = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    loss = detector_aware_loss(det, weight=per_sample, slack=0.25)
    assert torch.allclose(loss(logits, y, None), closed_form(logits, y, det.last_score, 0.3, per_sample, 0.25))
    targets = torch.tensor([3, 0, 0, 1, 2, 1])
    assert torch.allclose(loss(logits, y, targets),
                          closed_form(logits, y, det.last_score, 0.3, per_sample, 0.25, targets=targets))
    assert loss.__name__ == "detector_aware"


def test_detector_aware_loss_reads_the_score_of_the_same_forward_pass():
    det = ToyDetector(threshold=0.0)
    x = torch.tensor([[0.0, 1.0, 0.0, 2.0], [1.0, 0.0, 0.0, -3.0]], requires_grad=True)
    loss = detector_aware_loss(det, weight=1.0, slack=0.5)(det(x), torch.tensor([0, 0]), None)
    assert loss.tolist() == [1.0 - 2.5, -1.0]
    loss.sum().backward()  # the detector's logit is differentiated through, like the classifier's
    assert x.grad[:, 3].tolist() == [-1.0, 0.0]


@pytest.mark.parametrize("weight", [-1, -0.5, math.inf, math.nan, True, "10", None])
def test_a_bad_scalar_weight_is_refused(weight):
    with pytest.raises(RobustlabError, match=r"^weight must be a finite number >= 0, got " + repr(weight)):
        detector_aware_loss(ToyDetector(), weight=weight)


@pytest.mark.parametrize("weight", [torch.ones(2, 1), torch.tensor(1.0), torch.tensor([1.0, math.nan]),
                                    torch.tensor([1.0, math.inf]), torch.tensor([1.0, -0.5])])
def test_a_bad_per_sample_weight_is_refused(weight):
    with pytest.raises(RobustlabError, match=r"^a per-sample weight must be a 1-D tensor of finite numbers >= 0$"):
        detector_aware_loss(ToyDetector(), weight=weight)


def test_the_loss_refuses_a_score_or_weights_of_another_batch():
    det = ToyDetector()
    logits, y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64)
    message = (r"^the detector's score does not belong to these logits: attack the detector-wrapped model, "
               r"not the bare classifier$")
    with pytest.raises(RobustlabError, match=message):
        detector_aware_loss(det)(logits, y, None)  # no forward pass yet
    det.last_score = torch.zeros(3)
    with pytest.raises(RobustlabError, match=message):
        detector_aware_loss(det)(logits, y, None)
    det.last_score = torch.zeros(2)
    with pytest.raises(RobustlabError, match=r"^3 per-sample weights for a batch of 2$"):
        detector_aware_loss(det, weight=torch.ones(3))(logits, y, None)
    assert detector_aware_loss(det, weight=torch.zeros(2))(logits, y, None).tolist() == [0.0, 0.0]


def test_the_model_must_hold_exactly_one_detector():
    x, y = torch.zeros(1, 4), torch.zeros(1, dtype=torch.int64)
    for model, count in [(nn.Linear(4, 3), 0), (nn.Sequential(ToyDetector(), ToyDetector()), 2)]:
        with pytest.raises(RobustlabError, match=rf"^expected exactly one detector \(a module with last_score and "
                                                 rf"reject, such as LIDDetector\) inside the model, found {count}$"):
            adaptive_attack(model, x, y, threat=Linf(eps=0.1))

    class HalfDetector(nn.Module):  # last_score without reject: not a detector
        last_score = None

    with pytest.raises(RobustlabError, match="found 0"):
        adaptive_attack(nn.Sequential(HalfDetector()), x, y, threat=Linf(eps=0.1))


@pytest.mark.parametrize("kwargs,message", [
    ({"search_steps": 0}, "search_steps must be a positive integer, got 0"),
    ({"search_steps": True}, "search_steps must be a positive integer, got True"),
    ({"search_steps": 2.0}, "search_steps must be a positive integer, got 2.0"),
    ({"initial_weight": 0}, "initial_weight must be a positive finite number, got 0"),
    ({"initial_weight": -1.0}, "initial_weight must be a positive finite number, got -1.0"),
    ({"initial_weight": math.inf}, "initial_weight must be a positive finite number, got inf"),
    ({"initial_weight": True}, "initial_weight must be a positive finite number, got True"),
    ({"initial_weight": "10"}, "initial_weight must be a positive finite number, got '10'"),
])
def test_bad_search_settings_are_refused(kwargs, message):
    with pytest.raises(RobustlabError, match="^" + message.replace(".", r"\.") + "$"):
        adaptive_attack(ToyDetector(), torch.zeros(1, 4), torch.zeros(1, dtype=torch.int64), threat=Linf(eps=0.1),
                        **kwargs)


def scripted(monkeypatch, detector, script):
    """Replace rejection.PGD by a script: run -> {sample id (feature 0): (misclassified, rejected)};
    records each run's constructor arguments and call."""
    calls = []

    class ScriptedPGD:
        def __init__(self, *, steps, step_size, loss):
            self.settings = (steps, step_size)
            self.loss = loss

        def __call__(self, model, x, y, *, threat, generator):
            run = script[len(calls)]
            ids = [int(i) for i in x[:, 0]]
            detector.last_score = torch.full((len(ids),), 0.5, dtype=x.dtype)  # excess 1 at threshold 0 and slack 0.5
            weights = (-self.loss(x.new_zeros(len(ids), 3), y, None)).tolist()
            calls.append({"settings": self.settings, "ids": ids, "y": y.tolist(), "weights": weights,
                          "threat": threat, "generator": generator, "model": model})
            outcome = torch.tensor([run[i] for i in ids])
            x_adv = x.clone()
            x_adv[:, 1] = 10.0 * len(calls)  # which run made the point
            x_adv[:, 3] = torch.where(outcome[:, 1], 1.0, -1.0)  # rejected <=> detector logit above 0
            return types.SimpleNamespace(x_adv=x_adv, success=outcome[:, 0], forwards=3 * len(ids),
                                         backwards=2 * len(ids))

    monkeypatch.setattr(rejection, "PGD", ScriptedPGD)
    return calls


def test_adaptive_attack_runs_pgd_on_the_samples_left_and_keeps_the_evading_points(monkeypatch):
    det = ToyDetector(threshold=0.0)
    model = nn.Sequential(det)
    calls = scripted(monkeypatch, det, [
        {0: (True, False), 1: (True, True), 2: (False, False), 3: (True, True)},  # 0 evades at once
        {1: (True, False), 2: (True, True), 3: (False, False)},  # 1 evades at the second run
        {2: (False, True), 3: (True, True)},  # 2 and 3 never evade: the last run's points
    ])
    x = torch.zeros(4, 4, dtype=torch.float64)
    x[:, 0] = torch.arange(4.0)
    y = torch.tensor([2, 1, 0, 2])
    threat, generator = Linf(eps=0.2), torch.Generator().manual_seed(0)
    x_adv, info = adaptive_attack(model, x, y, threat=threat, steps=8, search_steps=3, initial_weight=2.0,
                                  generator=generator)
    assert [c["ids"] for c in calls] == [[0, 1, 2, 3], [1, 2, 3], [2, 3]]
    assert [c["y"] for c in calls] == [[2, 1, 0, 2], [1, 0, 2], [0, 2]]
    assert all(c["settings"] == (8, 2.5 * 0.2 / 8) for c in calls)  # step size 2.5 eps / steps
    assert all(c["threat"] is threat and c["generator"] is generator and c["model"] is model for c in calls)
    # rejected: x10 while unbounded, else the midpoint; neither: the midpoint below (defenses-2.md §1(d))
    assert [c["weights"] for c in calls] == [[2.0] * 4, [20.0, 1.0, 20.0], [1.5, 11.0]]
    assert x_adv[:, 1].tolist() == [10.0, 20.0, 30.0, 30.0]  # the evading run's point, else the last run's
    assert x_adv[:, 3].tolist() == [-1.0, -1.0, 1.0, 1.0] and x_adv[:, 0].tolist() == [0, 1, 2, 3]
    assert info["evaded"].tolist() == [True, True, False, False]
    assert info["weight"].tolist() == [2.0, 20.0, 1.75, 15.5] and info["weight"].dtype == torch.float64
    assert (info["forwards"], info["backwards"]) == (3 * 9, 2 * 9)
    assert x[:, 1].eq(0).all()  # the inputs are not touched


def test_adaptive_attack_stops_when_every_sample_evaded(monkeypatch):
    det = ToyDetector(threshold=0.0)
    calls = scripted(monkeypatch, det, [{0: (True, True), 1: (True, False)}, {0: (True, False)}])
    x = torch.zeros(2, 4)
    x[:, 0] = torch.arange(2.0)
    x_adv, info = adaptive_attack(det, x, torch.zeros(2, dtype=torch.int64), threat=Linf(eps=0.1), search_steps=5)
    assert len(calls) == 2 and info["evaded"].all()
    assert (info["forwards"], info["backwards"]) == (3 * 3, 2 * 3)
    assert [c["weights"] for c in calls] == [[10.0, 10.0], [100.0]]  # the default initial weight, then x10
    assert calls[0]["settings"] == (100, 2.5 * 0.1 / 100)  # 100 steps by default
    assert x_adv[:, 1].tolist() == [20.0, 10.0]


def test_rejection_metrics_on_a_hand_made_table():
    det = ToyDetector(threshold=0.0)
    # sample: (clean logits -> prediction, clean detector logit), (attacked prediction, attacked detector logit)
    rows = [  # y, clean pred, clean rejected, adv pred, adv rejected
        (0, 0, False, 1, True),    # fooled, detected
        (0, 0, False, 2, False),   # fooled, not detected
        (1, 1, True, 1, False),    # clean rejected (a false positive); attack failed
        (1, 0, False, 0, True),    # misclassified clean: not counted as fooled; rejected after the attack
        (2, 2, False, 2, True),    # attack failed, but rejected
        (2, 2, False, 0, False),   # fooled, not detected
    ]

    def point(pred, rejected):
        return [5.0 if j == pred else 0.0 for j in range(3)] + [1.0 if rejected else -1.0]

    x = torch.tensor([point(c, r) for _, c, r, _, _ in rows])
    x_adv = torch.tensor([point(a, r) for _, _, _, a, r in rows])
    y = torch.tensor([row[0] for row in rows])
    m = rejection_metrics(det, x, y, x_adv)
    assert m == pytest.approx({
        "samples": 6,
        "clean_accuracy": 5 / 6,
        "clean_rejection_rate": 1 / 6,
        "robust_accuracy": 2 / 6,  # rows 2 and 4
        "robust_accuracy_with_rejection": 4 / 6,  # and the rejected rows 0 and 3
        "attack_success_rate": 3 / 5,  # rows 0, 1 and 5 of the 5 clean-correct
        "detection_rate": 1 / 3,  # row 0 of the three fooled
    })


def test_rejection_metrics_without_fooled_or_correct_samples():
    det = ToyDetector(threshold=0.0)
    x = torch.tensor([[5.0, 0, 0, -1.0], [0, 5.0, 0, -1.0]])
    y = torch.tensor([0, 0])
    m = rejection_metrics(det, x, y, x.clone())  # nothing fooled: the detection rate is undefined
    assert math.isnan(m["detection_rate"]) and m["attack_success_rate"] == 0.0 and m["clean_accuracy"] == 0.5
    wrong = rejection_metrics(det, x, torch.tensor([2, 2]), x.clone())  # no clean-correct sample: rate 0, not NaN
    assert wrong["attack_success_rate"] == 0.0 and math.isnan(wrong["detection_rate"])


@pytest.mark.parametrize("x_shape,adv_shape,n", [((2, 4), (3, 4), 2), ((2, 4), (2, 5), 2), ((2, 4), (2, 4), 3)])
def test_rejection_metrics_refuse_mismatched_inputs(x_shape, adv_shape, n):
    message = rf"^x \({x_shape[0]}, {x_shape[1]}\), x_adv \({adv_shape[0]}, {adv_shape[1]}\) and y \({n},\) must match$"
    with pytest.raises(RobustlabError, match=message):
        rejection_metrics(ToyDetector(), torch.zeros(x_shape), torch.zeros(n, dtype=torch.int64), torch.zeros(adv_shape))


def test_adaptive_attack_defaults_to_four_runs_and_accepts_any_positive_weight(monkeypatch):
    det = ToyDetector(threshold=0.0)
    never = {0: (False, False)}
    calls = scripted(monkeypatch, det, [never] * 6)
    x = torch.zeros(1, 4)
    _, info = adaptive_attack(det, x, torch.zeros(1, dtype=torch.int64), threat=Linf(eps=0.1), initial_weight=0.5)
    assert len(calls) == 4 and not info["evaded"].any()  # four runs of the weight search by default
    assert [c["weights"] for c in calls] == [[0.5], [0.25], [0.125], [0.0625]]
    assert info["weight"].tolist() == [0.03125]


def test_one_search_step_is_one_run(monkeypatch):
    det = ToyDetector(threshold=0.0)
    calls = scripted(monkeypatch, det, [{0: (True, True)}, {0: (True, True)}])
    _, info = adaptive_attack(det, torch.zeros(1, 4), torch.zeros(1, dtype=torch.int64), threat=Linf(eps=0.1),
                              search_steps=1)
    assert len(calls) == 1 and info["weight"].tolist() == [100.0]


def test_attack_success_rate_over_a_single_clean_correct_sample():
    det = ToyDetector(threshold=0.0)
    x = torch.tensor([[5.0, 0, 0, -1.0], [0, 5.0, 0, -1.0]])
    x_adv = torch.tensor([[0, 5.0, 0, -1.0], [0, 5.0, 0, -1.0]])
    m = rejection_metrics(det, x, torch.tensor([0, 0]), x_adv)  # sample 0: the only clean-correct one, fooled
    assert m["attack_success_rate"] == 1.0 and m["detection_rate"] == 0.0 and m["robust_accuracy"] == 0.0
