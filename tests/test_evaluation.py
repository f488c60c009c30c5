"""evaluate(): per-sample table, metrics derived from it, JSON round trip."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import pytest

from robustlab.attacks import FGSM, PGD, Attack
from robustlab.data import load_dataset
from robustlab.errors import RobustlabError
from robustlab.evaluation import CLEAN, Evaluation, accuracy, evaluate, wilson_interval
from robustlab.models import build_model
from robustlab.report import evaluation_markdown
from robustlab.settings import RunSettings
from robustlab.threat import Linf
from robustlab.training import TrainConfig, train


@pytest.fixture(scope="module")
def digits_model():
    data = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test", limit=200)
    model = build_model("mlp", input_shape=tuple(data.shape), num_classes=10, hidden=[64])
    train(model, data.x, data.y, config=TrainConfig(epochs=15, batch_size=64, lr=0.1, seed=0))
    return model.eval(), test


@dataclass(frozen=True, kw_only=True)
class Identity(Attack):
    """An attack that does nothing: evaluation must not credit it with any break."""

    name = "identity"
    norms = frozenset({"Linf"})

    def _run(self, oracle, x, y, *, threat, targets, generator):
        return x.clone(), {}


def test_wilson_interval_known_values():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)
    # The ends at no and at every success are exact, not a rounding residue (1000 gave 2e-19).
    assert wilson_interval(0, 1000)[0] == 0.0 and wilson_interval(1000, 1000)[1] == 1.0
    assert wilson_interval(1, 1000)[0] > 0.0 and wilson_interval(999, 1000)[1] < 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert accuracy(3, 4)["value"] == 0.75


def test_metrics_are_derived_from_the_per_sample_table(digits_model):
    model, test = digits_model
    ev = evaluate(model, test.x, test.y, threat=Linf(eps=0.1), attacks=[FGSM(), PGD(steps=10)], indices=test.indices)
    m = ev.metrics
    n = len(test)
    clean_pred = model(test.x).argmax(1)
    assert m["clean_accuracy"]["count"] == int((clean_pred == test.y).sum())
    assert m["clean_accuracy"]["value"] > 0.9
    # The worst case counts a sample robust only if no attack broke it.
    robust = sum(1 for s in ev.samples if s["broken_by"] is None)
    assert m["robust_accuracy"]["count"] == robust
    for name in ("fgsm", "pgd"):
        survived = sum(1 for s in ev.samples if s["broken_by"] != CLEAN and not s["attacks"][name]["success"])
        assert m["robust_accuracy_per_attack"][name]["count"] == survived >= robust
    # PGD must really break this non-robust model.
    assert m["robust_accuracy"]["value"] < m["clean_accuracy"]["value"] - 0.3
    for s, i in zip(ev.samples, test.indices.tolist()):
        assert s["index"] == i
        if s["broken_by"] == CLEAN:
            assert s["clean_prediction"] != s["label"] and s["distance"] == 0
        elif s["broken_by"] is not None:
            assert s["attacks"][s["broken_by"]]["success"] and s["distance"] <= 0.1 + 1e-5
    assert sum(m["broken_by"].values()) + robust + (n - m["clean_accuracy"]["count"]) == n


def test_identity_attack_breaks_nothing(digits_model):
    model, test = digits_model
    ev = evaluate(model, test.x, test.y, threat=Linf(eps=0.1), attacks={"none": Identity()})
    assert ev.metrics["robust_accuracy"]["count"] == ev.metrics["clean_accuracy"]["count"]


def test_cascade_runs_later_attacks_only_on_unbroken_samples(digits_model):
    model, test = digits_model
    ev = evaluate(model, test.x, test.y, threat=Linf(eps=0.1), attacks={"fgsm": FGSM(), "pgd": PGD(steps=10)}, cascade=True)
    for s in ev.samples:
        if s["broken_by"] in (CLEAN, "fgsm"):
            assert s["attacks"]["pgd"]["success"] is None
    assert "pgd" not in ev.metrics["robust_accuracy_per_attack"]
    assert "fgsm" in ev.metrics["robust_accuracy_per_attack"]


def test_json_round_trip_and_markdown(digits_model, tmp_path):
    model, test = digits_model
    ev = evaluate(model, test.x[:40], test.y[:40], threat=Linf(eps=0.05), attacks=[PGD(steps=5)], settings=RunSettings(seed=3))
    path = ev.save(tmp_path / "ev.json")
    data = json.loads(path.read_text())
    assert data["threat"] == {"norm": "Linf", "eps": 0.05, "bounds": [0.0, 1.0]}
    assert data["provenance"]["seed"] == 3 and "torch" in data["provenance"]
    loaded = Evaluation.load(path)
    assert loaded.metrics == json.loads(json.dumps(ev.metrics))
    assert loaded.samples == data["samples"]
    text = evaluation_markdown(loaded)
    assert "worst case" in text and "Linf" in text


def test_same_seed_same_evaluation(digits_model):
    model, test = digits_model
    runs = [evaluate(model, test.x[:50], test.y[:50], threat=Linf(eps=0.05), attacks=[PGD(steps=3)], settings=RunSettings(seed=7)).samples
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_bad_arguments(digits_model):
    model, test = digits_model
    with pytest.raises(RobustlabError, match="at least one attack"):
        evaluate(model, test.x, test.y, threat=Linf(eps=0.1), attacks=[])
    with pytest.raises(RobustlabError, match="labels"):
        evaluate(model, test.x, test.y[:-1], threat=Linf(eps=0.1), attacks=[FGSM()])
    with pytest.raises(RobustlabError, match="not a robustlab Attack"):
        evaluate(model, test.x, test.y, threat=Linf(eps=0.1), attacks={"x": object()})


def test_empty_dataset(digits_model):
    model, test = digits_model
    ev = evaluate(model, test.x[:0], test.y[:0], threat=Linf(eps=0.1), attacks=[FGSM()])
    assert ev.samples == [] and ev.metrics["samples"] == 0


def test_saved_evaluation_is_strict_json_even_with_undefined_metrics(digits_model, tmp_path):
    # An accuracy over zero samples is NaN in memory; the file says null (RFC 8259 has no NaN).
    model, test = digits_model
    ev = evaluate(model, test.x[:0], test.y[:0], threat=Linf(eps=0.1), attacks=[FGSM()])
    assert math.isnan(ev.metrics["robust_accuracy"]["value"])

    def refuse(constant):
        raise AssertionError(f"{constant} in evaluation.json")

    data = json.loads(ev.save(tmp_path / "evaluation.json").read_text(), parse_constant=refuse)
    assert data["metrics"]["robust_accuracy"]["value"] is None


def test_markdown_escapes_names_from_users_and_model_cards(digits_model):
    model, test = digits_model
    hostile = "evil|name <script>alert(1)</script> *bold* _it_ `code` [link](x)\nsecond line"
    ev = evaluate(model, test.x[:20], test.y[:20], threat=Linf(eps=0.05), attacks={hostile: FGSM()},
                  model_card={"architecture": "mlp|<b>x</b>", "dataset": "digits\n# heading", "training": "*natural*"})
    text = evaluation_markdown(ev, title="run | <i>one</i>\nand two")
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 5  # header, rule, clean, the attack, worst case
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 4 for line in table)  # three cells each, no extra pipe
    assert "<" not in text and "\n# heading" not in text and "second line" in text
    escaped = ("evil\\|name &lt;script&gt;alert(1)&lt;/script&gt; \\*bold\\* \\_it\\_ \\`code\\` "
               "\\[link\\](x) second line")
    assert f"- **{escaped}** (fgsm): " in text and f"| robust: {escaped} | " in text
    assert lines[0] == "# run \\| &lt;i&gt;one&lt;/i&gt; and two"
    assert "- dataset: digits # heading" in lines and "- training: \\*natural\\*" in lines
