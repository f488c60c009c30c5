"""`robustlab reproduce madry-mnist`: the plumbing at a minuscule size, the accuracy rule."""

from __future__ import annotations

import json
import os

import pytest
import torch

from robustlab.attacks import PGD
from robustlab.errors import RobustlabError
from robustlab.reproduce import REPRODUCTIONS, ReproOptions, run_reproduction
from robustlab.reproduce.madry import TABLE1, robust_correct
from robustlab.threat import Linf

pytestmark = pytest.mark.usefixtures("single_thread")

#: Test-only size: scikit-learn digits (no download), a small MLP, a few training and attack steps.
TINY = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [32]}, "train_samples": None,
        "natural_epochs": 3, "adversarial_epochs": 2, "eps_warmup_epochs": 0.0, "lr": 3e-3, "train_steps": 2,
        "train_step_size": 0.15, "short_steps": 2, "long_steps": 3, "restarts": 2, "step_size": 0.15, "chunk": 16}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("madry")
    result = run_reproduction("madry-mnist", ReproOptions(images=24, out=out, cache_dir=out / "models",
                                                         overrides=TINY))
    return result, out


def test_registered_with_a_cpu_budget():
    description, budget, function = REPRODUCTIONS["madry-mnist"]
    assert "Madry" in description and "CPU" in budget and callable(function)


def test_tiny_run_has_every_row_with_paper_numbers(tiny_run):
    result, out = tiny_run
    record = json.loads((out / "madry-mnist.json").read_text())
    assert record["reproduction"] == "madry-mnist" and record["images"] == 24
    assert record["overrides"]["dataset"] == "digits" and "wall_time_s" in record
    rows = record["rows"]
    assert [(r["method"], r["source"]) for r in rows] == [(r.method, r.source) for r in TABLE1]
    for row in rows:
        assert 0.0 <= row["ours"]["A"] <= 1.0
        white_box = row["source"] == "A"
        assert (row["ours"]["natural"] is not None) == white_box
        if white_box:
            assert 0.0 <= row["ours"]["natural"] <= 1.0
    by_key = {(r["method"], r["paper_steps"], r["paper_restarts"], r["source"]): r for r in rows}
    assert by_key[("PGD", 100, 20, "A")]["paper"] == 0.893
    assert by_key[("PGD", 100, 20, "A")]["restarts"] == 2 and by_key[("PGD", 100, 20, "A")]["steps"] == 3
    assert by_key[("CW+", 40, 1, "A'")]["paper"] == 0.964 and by_key[("CW+", 40, 1, "A'")]["kappa"] == 50.0
    assert by_key[("FGSM", None, None, "A_nat")]["paper"] is None
    assert record["paper_clean_accuracy"] == 0.988
    markdown = (out / "madry-mnist.md").read_text()
    assert markdown == result.markdown and "89.3%" in markdown and "Wall time" in markdown
    assert "Test-only overrides" in markdown and "3 (paper 100)" in markdown


def test_tiny_run_attacks_bite(tiny_run):
    """Teeth: on the natural model, white-box PGD must cost accuracy (an attack that returned its
    input unchanged would leave the clean accuracy)."""
    record = tiny_run[0].record
    clean = record["clean_accuracy"]["natural"]
    pgd = next(r for r in record["rows"] if r["method"] == "PGD" and r["source"] == "A")
    assert clean > 0.5
    assert pgd["ours"]["natural"] < clean - 0.3


def test_models_are_cached(tiny_run):
    _, out = tiny_run
    again = run_reproduction("madry-mnist", ReproOptions(images=4, out=out / "again", cache_dir=out / "models",
                                                        overrides=TINY))
    assert all(info["cached"] for info in again.record["models"].values())


def test_targeted_accuracy_needs_the_label_not_just_a_missed_target():
    # A fixed linear model that always predicts class 2: a targeted attack towards 1 "fails" on
    # every image, yet none is classified correctly when the label is 0.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    x, y = torch.rand(6, 1, 2, 2), torch.zeros(6, dtype=torch.long)
    correct = robust_correct(model, PGD(steps=2, step_size=0.1), x, y, threat=Linf(0.1),
                             targets=torch.ones(6, dtype=torch.long), seed=0, chunk=4)
    assert correct.shape == (6,) and not correct.any()


def test_unknown_override_is_a_clear_error(tmp_path):
    with pytest.raises(RobustlabError, match="overrides"):
        run_reproduction("madry-mnist", ReproOptions(out=tmp_path, overrides={"epochs": 1}))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ROBUSTLAB_DATA"), reason="needs MNIST via ROBUSTLAB_DATA")
def test_cpu_scale_reproduction(tmp_path):
    """The default CPU-scale run on MNIST (about 10-15 minutes): PGD training must make A far more
    robust than the natural model, and transfer must be weaker than white-box PGD."""
    record = run_reproduction("madry-mnist", ReproOptions(out=tmp_path)).record
    pgd = next(r for r in record["rows"] if (r["method"], r["paper_steps"], r["paper_restarts"], r["source"])
               == ("PGD", 40, 1, "A"))
    transfer = next(r for r in record["rows"] if (r["method"], r["paper_steps"], r["source"]) == ("PGD", 40, "A'"))
    assert pgd["ours"]["A"] > pgd["ours"]["natural"] + 0.5
    assert transfer["ours"]["A"] >= pgd["ours"]["A"]
