"""`robustlab reproduce training-mnist`: every training method through the table at a minuscule size."""

from __future__ import annotations

import json

import pytest

from robustlab.errors import RobustlabError
from robustlab.reproduce import REPRODUCTIONS, ReproOptions, run_reproduction
from robustlab.reproduce.training_methods import METHODS

pytestmark = pytest.mark.usefixtures("single_thread")

#: Test-only size: scikit-learn digits (no download), a small MLP, one short epoch per method.
TINY = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [32]}, "train_samples": 256, "epochs": 2,
        "eps_warmup_epochs": 1.0, "lr": 3e-3, "images": 24, "attack_steps": 3, "step_size": 0.1,
        "eps_grid": (0.1, 0.3), "suite_images": 6, "chunk": 24}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("training")
    result = run_reproduction("training-mnist", ReproOptions(out=out, cache_dir=out / "models", overrides=TINY))
    return result, out


def test_registered_with_a_cpu_budget():
    description, budget, function = REPRODUCTIONS["training-mnist"]
    assert "YOPO" in description and "CPU" in budget and callable(function)


def test_every_method_has_a_row_with_its_metrics_and_the_papers_mnist_numbers(tiny_run):
    result, out = tiny_run
    record = json.loads((out / "training-mnist.json").read_text())
    assert [r["label"] for r in record["rows"]] == list(METHODS)
    for row in record["rows"]:
        ours = row["ours"]
        assert 0.0 <= ours["pgd40"] <= ours["clean"] and 0.0 <= ours["cw"] <= ours["clean"]
        grid = list(ours["grid"].values())
        assert len(grid) == 2 and all(0.0 <= g <= ours["clean"] for g in grid)
        assert ours["avg_rob_acc"] == pytest.approx(sum(grid) / 2)
        assert ours["avg_acc"] == pytest.approx((ours["clean"] + sum(grid)) / 3)
        suite = ours["suite"]
        assert suite["images"] == 6 and 0.0 <= suite["robust"] <= 1.0 and 0.0 <= suite["pgd40_same_images"] <= 1.0
        assert row["model"]["train_seconds"] >= 0 and not row["model"]["cached"]
    by = {r["label"]: r for r in record["rows"]}
    assert by["PGD-40"]["paper"] == {"clean": 0.9949, "pgd40": 0.9656, "cw": 0.9352}
    assert by["TRADES"]["paper"] is None and by["natural"]["method"] == "natural"
    markdown = (out / "training-mnist.md").read_text()
    assert markdown == result.markdown and "(96.6%)" in markdown and "Test-only overrides" in markdown


def test_second_run_reads_every_model_from_the_cache(tiny_run, tmp_path):
    _, out = tiny_run
    options = ReproOptions(out=tmp_path, cache_dir=out / "models", overrides={**TINY, "methods": ("PGD-5", "MMA")})
    record = run_reproduction("training-mnist", options).record
    assert [r["label"] for r in record["rows"]] == ["PGD-5", "MMA"]
    assert all(r["model"]["cached"] for r in record["rows"])


def test_unknown_rows_and_overrides_are_refused(tmp_path):
    with pytest.raises(RobustlabError, match="unknown training-mnist rows"):
        run_reproduction("training-mnist", ReproOptions(out=tmp_path, overrides={**TINY, "methods": ("PGD-7",)}))
    with pytest.raises(RobustlabError, match="overrides"):
        run_reproduction("training-mnist", ReproOptions(out=tmp_path, overrides={"epoch": 1}))


def test_zoo_table_evaluates_the_shipped_models_and_lists_the_untrained(tmp_path, monkeypatch):
    """training-mnist-zoo at test size: mnist-tiny at its eps (0.05) on its card's 50 images, beside
    a zoo model that counts as not trained (the zoo is narrowed to mnist-tiny)."""
    from robustlab import zoo
    from robustlab.data import load_dataset, locate
    from robustlab.zoo.build import correct_predictions

    if locate("mnist") is None:
        pytest.skip("needs MNIST (ROBUSTLAB_DATA)")
    monkeypatch.setattr(zoo, "names", lambda: ["mnist-tiny"])
    overrides = {"zoo": ("mnist-tiny", "mnist-yopo"), "eps": 0.05, "attack_steps": 3, "step_size": 0.02,
                 "eps_grid": (0.02, 0.05), "suite_images": 0, "chunk": 50}
    result = run_reproduction("training-mnist-zoo", ReproOptions(images=50, out=tmp_path, overrides=overrides))
    tiny, yopo = result.record["rows"]
    assert not yopo["trained"] and "not in the zoo yet" in result.markdown and "mnist-yopo" in result.markdown
    card = zoo.card("mnist-tiny")
    assert tiny["trained"] and tiny["model"]["source"] == "zoo:mnist-tiny" and tiny["model"]["epochs"] == 5
    test = load_dataset("mnist", split="test")
    assert tiny["ours"]["clean"] == pytest.approx(
        float(correct_predictions(zoo.load("mnist-tiny"), test.x[:50], test.y[:50]).float().mean()))
    # The card's `standard` number on the same first 50 images, not recomputed.
    assert tiny["ours"]["suite"]["from_card"] and tiny["ours"]["suite"]["robust"] == card.metrics["standard"]["robust_accuracy"]
    # Teeth: PGD at the card's eps bites (the tiny model is not robust).
    assert tiny["ours"]["grid"]["0.05"] < tiny["ours"]["clean"] - 0.1
    assert 0 <= tiny["ours"]["pgd40"] <= tiny["ours"]["clean"]
    # The fast suite over the grid (50 images): at least as strong as 3 PGD steps at each eps.
    fast = tiny["ours"]["grid_fast"]
    assert fast["images"] == 50 and list(fast["robust"]) == ["0.02", "0.05"]
    assert all(fast["robust"][e] <= tiny["ours"]["grid"][e] for e in fast["robust"])
    assert fast["robust"]["0.05"] < fast["robust"]["0.02"] <= tiny["ours"]["clean"]
    assert fast["avg_rob_acc"] == pytest.approx(sum(fast["robust"].values()) / 2)
    assert "`fast` at eps 0.02 / 0.05" in result.markdown
    assert f"| {card.architecture}, 5 epochs, " in result.markdown  # each row names its network
