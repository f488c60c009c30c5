"""`robustlab reproduce madry-mnist` and `madry-cifar10`: the plumbing at a minuscule size, the accuracy rule."""

from __future__ import annotations

import json
import os

import pytest
import torch

from robustlab import zoo
from robustlab.attacks import PGD
from robustlab.data import load_dataset, locate
from robustlab.errors import RobustlabError
from robustlab.evaluation.metrics import wilson_interval
from robustlab.models import checkpoint_paths
from robustlab.reproduce import REPRODUCTIONS, ReproOptions, run_reproduction
from robustlab.reproduce.madry import CIFAR_SCALE, CPU_SCALE, FULL_SCALE, TABLE1, TABLE2, TABLES, robust_correct
from robustlab.threat import Linf
from robustlab.zoo.build import correct_predictions

pytestmark = pytest.mark.usefixtures("single_thread")

#: Test-only size: scikit-learn digits (no download), a small MLP trained here (no zoo models), a
#: few training and attack steps.
TINY = {"dataset": "digits", "zoo_natural": None, "zoo_pgd": None, "model": "mlp", "model_args": {"hidden": [32]}, "train_samples": None,
        "natural_epochs": 3, "adversarial_epochs": 2, "eps_warmup_epochs": 0.0, "lr": 3e-3, "train_steps": 2,
        "train_step_size": 0.15, "steps": {40: 2, 100: 3}, "restarts": 2, "step_size": 0.15, "chunk": 16}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("madry")
    result = run_reproduction("madry-mnist", ReproOptions(images=24, out=out, cache_dir=out / "models",
                                                         overrides=TINY))
    return result, out


def test_registered_with_a_cpu_budget():
    for name in ("madry-mnist", "madry-cifar10"):
        description, budget, function = REPRODUCTIONS[name]
        assert "Madry" in description and "CPU" in budget and callable(function)


def test_table2_is_the_papers_cifar10_table_on_the_zoo():
    assert [(r.method, r.steps, r.source, r.accuracy) for r in TABLE2] == [
        ("FGSM", None, "A", 0.561), ("PGD", 7, "A", 0.500), ("PGD", 20, "A", 0.458), ("CW", 30, "A", 0.468),
        ("FGSM", None, "A'", 0.670), ("PGD", 7, "A'", 0.642), ("CW", 30, "A'", 0.787),
        ("FGSM", None, "A_nat", 0.856), ("PGD", 7, "A_nat", 0.860)]
    table = TABLES["madry-cifar10"]
    assert table.rows is TABLE2 and table.natural_accuracy == 0.873 and table.kappa == {"CW": 50.0}
    assert TABLES["madry-mnist"].kappa == {"CW": 0.0, "CW+": 50.0}
    assert (CIFAR_SCALE.zoo_natural, CIFAR_SCALE.zoo_pgd, CIFAR_SCALE.dataset) == (
        "cifar10-natural", "cifar10-pgd", "cifar10")
    assert CIFAR_SCALE.eps == 8 / 255 and CIFAR_SCALE.step_size == 2 / 255 and CIFAR_SCALE.steps == {}
    assert table.full.images == 10000 and table.full.zoo_pgd == "cifar10-pgd"


def test_eps_is_written_on_the_255_grid_where_it_lies():
    from robustlab.reproduce.madry import _eps_text

    assert [_eps_text(e) for e in (8 / 255, 2 / 255, 0.3, 0.01, 0.04)] == ["8/255", "2/255", "0.3", "0.01", "0.04"]


def test_tiny_run_has_every_row_with_paper_numbers(tiny_run):
    result, out = tiny_run
    record = json.loads((out / "madry-mnist.json").read_text())
    assert record["reproduction"] == "madry-mnist" and record["images"] == 24
    assert record["overrides"]["dataset"] == "digits" and "wall_time_s" in record
    rows = record["rows"]
    assert [(r["method"], r["source"]) for r in rows] == [(r.method, r.source) for r in TABLE1]
    for row in rows:
        assert 0.0 <= row["ours"]["A"] <= 1.0
        assert row["ci_A"] == pytest.approx(list(wilson_interval(round(24 * row["ours"]["A"]), 24)))
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
    worst = min(r["ours"]["A"] for r in rows if r["source"] == "A")
    error = 100 * (worst * (1 - worst) / 24) ** 0.5  # the binomial standard error at the worst white-box row
    assert f"standard error about {error:.1f} points at {100 * worst:.1f}%" in markdown


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
    assert not any(row["cached"] for row in again.record["rows"])  # other images: every row computed anew


def test_rows_are_cached_per_images_attack_and_models(tiny_run):
    """A rerun on the same images reads every row back (a killed run resumes row by row) with the
    same numbers."""
    result, out = tiny_run
    again = run_reproduction("madry-mnist", ReproOptions(images=24, out=out / "rerun", cache_dir=out / "models",
                                                        overrides=TINY)).record
    assert all(row["cached"] for row in again["rows"])
    assert [row["ours"] for row in again["rows"]] == [row["ours"] for row in result.record["rows"]]
    # each row says how long it took to compute, also when read back
    assert all(row["compute_seconds"] > 0 for row in result.record["rows"])
    assert [row["compute_seconds"] for row in again["rows"]] == [row["compute_seconds"] for row in result.record["rows"]]
    assert again["worst_white_box"] == result.record["worst_white_box"]
    assert not any(row["cached"] for row in result.record["rows"])


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


def test_default_attacks_the_zoo_models():
    assert (CPU_SCALE.zoo_natural, CPU_SCALE.zoo_pgd) == ("mnist-natural", "mnist-pgd")
    assert CPU_SCALE.restarts == 20 and CPU_SCALE.images == 1000
    assert FULL_SCALE.zoo_natural is None and FULL_SCALE.zoo_pgd is None  # --full trains the paper's CNN


needs_mnist = pytest.mark.skipif(locate("mnist") is None, reason="needs MNIST (ROBUSTLAB_DATA)")

#: The zoo path at test size: mnist-tiny (a 784-32-32-10 MLP, seconds to train) stands for both
#: zoo models; A' is trained from its recipe with seed 1.
ZOO_TINY = {"zoo_natural": "mnist-tiny", "zoo_pgd": "mnist-tiny", "steps": {40: 2, 100: 3}, "restarts": 2,
            "chunk": 20}


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("madry-zoo")
    result = run_reproduction("madry-mnist", ReproOptions(images=20, out=out, cache_dir=out / "models",
                                                         overrides=ZOO_TINY))
    return result, out


@needs_mnist
def test_zoo_models_are_attacked_as_shipped_and_the_copy_is_trained_from_the_recipe(zoo_run):
    record, out = zoo_run[0].record, zoo_run[1]
    models = record["models"]
    sha = zoo.card("mnist-tiny").extra["zoo"]["sha256"]
    for kind in ("natural", "A"):
        assert models[kind]["source"] == "zoo:mnist-tiny" and not models[kind]["trained_here"]
        assert models[kind]["sha256"] == sha
    copy = models["A'"]
    assert copy["trained_here"] and not copy["cached"] and copy["seed"] == zoo.recipe("mnist-tiny")["seed"] + 1
    assert copy["source"].startswith(str(out / "models" / "zoo-runs" / "mnist-tiny-seed1-"))
    assert copy["training"]["config"]["seed"] == 1
    assert {k: v for k, v in copy["training"]["config"].items() if k != "seed"} == \
        {k: v for k, v in zoo.card("mnist-tiny").training["config"].items() if k != "seed"}
    # Teeth: the table's clean accuracy of A is the shipped model's on the first 20 test images, and
    # the copy is another network (independent weights), not the shipped one again.
    test = load_dataset("mnist", split="test")
    shipped = zoo.load("mnist-tiny")
    assert record["clean_accuracy"]["A"] == pytest.approx(
        float(correct_predictions(shipped, test.x[:20], test.y[:20]).float().mean()))
    assert checkpoint_paths(copy["source"])[0].read_bytes() != \
        checkpoint_paths(zoo.checkpoint("mnist-tiny"))[0].read_bytes()
    assert record["first_images"] and record["images"] == 20 and not record["retrain"]
    assert "zoo:mnist-tiny as shipped" in zoo_run[0].markdown and "seed 1" in zoo_run[0].markdown
    assert 0 <= record["worst_white_box"]["per_image"] <= record["worst_white_box"]["per_row"] <= 1


@needs_mnist
def test_table2_runs_its_rows_with_the_cw_confidence_of_the_cifar10_code(zoo_run):
    """Table 2's runner at test size (mnist-tiny for every model, A' read from the zoo run's cache):
    its nine rows in order, the paper's steps mapped, CW with kappa 50, the CIFAR-10 page."""
    _, out = zoo_run
    small = {"dataset": "mnist", "zoo_natural": "mnist-tiny", "zoo_pgd": "mnist-tiny", "eps": 0.05,
             "step_size": 0.0125, "steps": {7: 2, 20: 3, 30: 2}, "chunk": 20}
    result = run_reproduction("madry-cifar10", ReproOptions(images=12, out=out / "table2", cache_dir=out / "models",
                                                           overrides=small))
    record, markdown = result.record, result.markdown
    assert record["table"] == 2 and record["models"]["A'"]["cached"]
    assert [(r["method"], r["paper_steps"], r["steps"], r["source"]) for r in record["rows"]] == [
        (r.method, r.steps, small["steps"].get(r.steps), r.source) for r in TABLE2]
    assert {r["kappa"] for r in record["rows"] if r["method"] == "CW"} == {50.0}
    assert all(r["restarts"] in (None, 1) for r in record["rows"])
    assert record["paper_clean_accuracy"] == 0.873 and "87.3%" in markdown
    assert markdown.startswith("## Madry et al. Table 2 (CIFAR-10, L∞ eps = 0.05)")
    assert "paper: 45.8%, PGD-20" in markdown and "(paper: 64.2%)" in markdown and "restarts" not in markdown
    assert "w32-10" in markdown and "CW: PGD on the C&W margin loss with kappa 50" in markdown


@needs_mnist
def test_retrain_rebuilds_the_zoo_models_from_their_recipes(zoo_run):
    _, out = zoo_run
    again = run_reproduction("madry-mnist", ReproOptions(images=4, out=out / "retrain", cache_dir=out / "models",
                                                        overrides=ZOO_TINY, retrain=True)).record
    models = again["models"]
    assert again["retrain"] and models["A'"]["cached"]  # the copy from the first run
    for kind in ("natural", "A"):
        assert models[kind]["trained_here"] and models[kind]["seed"] == 0
        assert models[kind]["source"].startswith(str(out / "models" / "zoo-runs" / "mnist-tiny-seed0-"))
        assert models[kind]["training"]["config"] == zoo.card("mnist-tiny").training["config"]
    assert models["A"]["cached"]  # trained once for the natural model, reused for A


@needs_mnist
def test_no_train_reports_the_rows_of_a_missing_copy_as_not_run(tmp_path):
    """--no-train with A' not cached: the white-box and natural-source rows as usual, A''s rows
    marked not run (no number), nothing trained."""
    record = run_reproduction("madry-mnist", ReproOptions(images=8, out=tmp_path, cache_dir=tmp_path / "models",
                                                         overrides=ZOO_TINY, train=False)).record
    for row in record["rows"]:
        if row["source"] == "A'":
            assert row["not_run"] and row["ours"]["A"] is None and "not trained" in row["not_run"]
        else:
            assert "not_run" not in row and 0 <= row["ours"]["A"] <= 1
    assert "A'" not in record["models"] and record["clean_accuracy"]["A'"] is None
    assert not (tmp_path / "models" / "zoo-runs").exists()
    markdown = (tmp_path / "madry-mnist.md").read_text()
    assert "not run (A' not trained)" in markdown and "trains nothing (--no-train)" in markdown
    with pytest.raises(RobustlabError, match="contradict"):
        ReproOptions(cache_dir=tmp_path, retrain=True, train=False).zoo_model("mnist-tiny")


def test_zoo_model_not_trained_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)  # an empty zoo
    with pytest.raises(RobustlabError, match="not trained yet.*--retrain"):
        ReproOptions(cache_dir=tmp_path).zoo_model("mnist-tiny")
    with pytest.raises(RobustlabError, match="no zoo model 'mnist-nope'"):
        ReproOptions(cache_dir=tmp_path).zoo_model("mnist-nope")


def test_one_run_at_a_time_trains_in_a_run_folder(tmp_path, monkeypatch):
    import robustlab.zoo.build as build

    seen = []

    def fake_train(name, run_dir, **kwargs):
        seen.append(sorted(p.name for p in run_dir.iterdir()))
        raise RobustlabError("stopped")

    monkeypatch.setattr(build, "train_recipe", fake_train)
    options = ReproOptions(cache_dir=tmp_path)
    with pytest.raises(RobustlabError, match="stopped"):
        options.zoo_model("mnist-tiny", seed=7)
    assert seen == [["training.lock"]]  # held while training, released after
    (run_dir,) = (tmp_path / "zoo-runs").iterdir()
    assert run_dir.name.startswith("mnist-tiny-seed7-") and not (run_dir / "training.lock").exists()
    (run_dir / "training.lock").touch()  # another run is training there
    with pytest.raises(RobustlabError, match="being trained by another run"):
        options.zoo_model("mnist-tiny", seed=7)
    assert len(seen) == 1


def test_cli_retrain_reaches_the_options(monkeypatch, tmp_path):
    import robustlab.reproduce as reproduce
    from robustlab.cli import main

    seen = []

    def fake(name, options):
        seen.append((name, options.retrain, options.train))
        raise RobustlabError("stop here")

    monkeypatch.setattr(reproduce, "run_reproduction", fake)
    for argv, retrain, train in ((["--retrain"], True, True), ([], False, True), (["--no-train"], False, False)):
        assert main(["reproduce", "madry-mnist", "--out", str(tmp_path), *argv]) == 2
        assert seen.pop() == ("madry-mnist", retrain, train)


def test_unknown_override_is_a_clear_error(tmp_path):
    with pytest.raises(RobustlabError, match="overrides"):
        run_reproduction("madry-mnist", ReproOptions(out=tmp_path, overrides={"epochs": 1}))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ROBUSTLAB_DATA"), reason="needs MNIST via ROBUSTLAB_DATA")
def test_cpu_scale_reproduction(tmp_path):
    """The default run on MNIST (the zoo's models; about 15 minutes once A' is cached, plus about 45
    to train A' the first time): PGD training must make A far more robust than the natural model,
    transfer must be weaker than white-box PGD, and the worst white-box accuracy must reach 88%
    (the paper: 89.3%)."""
    record = run_reproduction("madry-mnist", ReproOptions(out=tmp_path)).record
    pgd = next(r for r in record["rows"] if (r["method"], r["paper_steps"], r["paper_restarts"], r["source"])
               == ("PGD", 40, 1, "A"))
    transfer = next(r for r in record["rows"] if (r["method"], r["paper_steps"], r["source"]) == ("PGD", 40, "A'"))
    assert pgd["ours"]["A"] > pgd["ours"]["natural"] + 0.5
    assert transfer["ours"]["A"] >= pgd["ours"]["A"]
    assert record["worst_white_box"]["per_row"] >= 0.88
