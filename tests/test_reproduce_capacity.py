"""`robustlab reproduce madry-capacity` (Madry et al. Figure 4): the widths of madry-cnn, the
plumbing at a minuscule size, resuming from the model cache, the findings' wording."""

from __future__ import annotations

import json

import pytest

from robustlab.errors import RobustlabError
from robustlab.models import build_model
from robustlab.reproduce import REPRODUCTIONS, ReproOptions, run_reproduction
from robustlab.reproduce.madry_capacity import FINDINGS, METHODS, _trend

pytestmark = pytest.mark.usefixtures("single_thread")

#: Test-only size: scikit-learn digits (no download), one epoch, a few attack steps.
TINY = {"dataset": "digits", "widths": (1, 2), "train_samples": 300, "epochs": 1, "eps_warmup_epochs": 0.5,
        "batch_size": 64, "train_steps": 2, "train_step_size": 0.15, "attack_steps": 3, "attack_step_size": 0.1, "loss_images": 32, "chunk": 16}


def test_madry_cnn_widths_follow_the_capacity_scale():
    def count(width, shape=(1, 28, 28)):
        model = build_model("madry-cnn", input_shape=shape, num_classes=10, width=width, seed=0)
        return sum(p.numel() for p in model.parameters())

    # conv 2w and 4w filters (5x5), fc 64w on the 7x7 map, then 10 outputs.
    for w in (1, 2, 4):
        expected = (25 * 2 * w + 2 * w) + (25 * 2 * w * 4 * w + 4 * w) + (49 * 4 * w * 64 * w + 64 * w) + (64 * w * 10 + 10)
        assert count(w) == expected
    assert count(16) == 3_274_634 == sum(p.numel() for p in build_model(
        "madry-cnn", input_shape=(1, 28, 28), num_classes=10, seed=0).parameters())
    for bad in (0, 1.5, True):
        with pytest.raises(RobustlabError, match="width"):
            build_model("madry-cnn", input_shape=(1, 28, 28), num_classes=10, width=bad)


def test_trend_names_the_direction():
    assert _trend([0.1, 0.2, 0.3]) == "rises with every doubling"
    assert _trend([3.0, 2.0, 1.0]) == "falls with every doubling"
    assert _trend([0.1, 0.3, 0.2]) == "is not monotone in the width"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("capacity")
    options = ReproOptions(images=24, out=out, cache_dir=out / "models", overrides=TINY)
    return run_reproduction("madry-capacity", options), options


def test_registered_with_a_cpu_budget():
    description, budget, function = REPRODUCTIONS["madry-capacity"]
    assert "Figure 4" in description and "CPU" in budget and callable(function)


def test_tiny_run_has_every_method_and_width(tiny_run):
    result, options = tiny_run
    record = json.loads(result.json_path.read_text())
    rows = record["rows"]
    assert [(r["method"], r["width"]) for r in rows] == [(m, w) for m in METHODS for w in (1, 2)]
    assert record["images"] == 24 and record["overrides"]["dataset"] == "digits"
    for row in rows:
        accuracy = row["accuracy"]
        assert 0 <= accuracy["pgd"] <= accuracy["clean"] <= 1 and 0 <= accuracy["fgsm"] <= accuracy["clean"]
        assert row["loss"]["pgd"] > 0 and row["loss"]["training_adversary"] > 0 and not row["cached"]
    for method in METHODS:
        small, large = (r["parameters"] for r in rows if r["method"] == method)
        assert large > small
    # Natural training's adversary is no adversary: its saddle value is the clean loss, below PGD's.
    for row in rows:
        if row["method"] == "natural":
            assert row["loss"]["training_adversary"] < row["loss"]["pgd"]
    assert set(record["ours"]) == set(FINDINGS)
    for finding in FINDINGS.values():
        assert finding in result.markdown
    pgd_clean = [f"{100 * r['accuracy']['clean']:.1f}%" for r in rows if r["method"] == "pgd"]
    assert " / ".join(pgd_clean) in record["ours"]["weak"]


def test_a_second_run_reads_every_model_from_the_cache(tiny_run):
    result, options = tiny_run
    again = run_reproduction("madry-capacity", options)
    assert all(row["cached"] for row in again.record["rows"])
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("cached",)} for r in rows]  # noqa: E731
    assert strip(again.record["rows"]) == strip(result.record["rows"])
