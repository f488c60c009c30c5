"""`robustlab reproduce`: the registry, the C&W tables end to end at a tiny size, the protocol."""

from __future__ import annotations

import json
import os

import pytest
import torch

from robustlab.cli import main
from robustlab.data import locate
from robustlab.errors import RobustlabError
from robustlab.reproduce import REPRODUCTIONS, ReproOptions, run_reproduction
from robustlab.reproduce.cw import targeted_cases

pytestmark = pytest.mark.usefixtures("single_thread")

CW_TABLES = ("cw-table3", "cw-table4", "cw-table6")

#: Test-only size: scikit-learn digits (no download), a small MLP, a few attack steps.
TINY = {"zoo_natural": None, "zoo_distilled": None, "dataset": "digits", "model": "mlp", "model_args": {"hidden": [64]}, "train_samples": None, "epochs": 5,
        "lr": 3e-3, "cw_l2": {"binary_search_steps": 2, "max_iterations": 20, "learning_rate": 0.1},
        "cw_l0": {"max_iterations": 10, "learning_rate": 0.1}, "cw_linf": {"max_iterations": 10},
        "fgsm_grid": (0.1, 0.3, 1.0), "bim_grid": (0.1, 0.3), "bim_steps": 3}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def test_list_names_the_three_tables(capsys):
    assert set(CW_TABLES) <= set(REPRODUCTIONS)
    for name in CW_TABLES:
        description, budget, function = REPRODUCTIONS[name]
        assert description and "CPU" in budget and callable(function)
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in CW_TABLES)


@pytest.mark.parametrize("name", CW_TABLES)
def test_tiny_run_writes_json_and_markdown_with_the_paper_column(name, tmp_path, cache):
    result = run_reproduction(name, ReproOptions(images=2, out=tmp_path, cache_dir=cache, overrides=TINY))
    record = json.loads((tmp_path / f"{name}.json").read_text())
    markdown = (tmp_path / f"{name}.md").read_text()
    assert record["reproduction"] == name and record["images"] == 2 and "wall_time_s" in record
    assert record["overrides"]["dataset"] == "digits"
    assert "paper" in markdown and "Wall time" in markdown and markdown == result.markdown
    if name == "cw-table3":
        assert set(record["results"]) == {f"f{k}" for k in range(1, 8)}
        assert record["paper_table"]["f6"]["best"]["tanh"] == {"mean": 1.94, "prob": 1}
    else:
        attacks = [row["attack"] for row in record["rows"]]
        assert attacks[0] == "C&W L0" and "JSMA-F" in attacks and "DeepFool" in attacks
        assert any("FGSM" in a for a in attacks) and any("Iterative" in a for a in attacks)
        l2 = next(row for row in record["rows"] if row["attack"] == "C&W L2")
        assert l2["paper"]["best"]["mean"] == (1.36 if name == "cw-table4" else 1.7)
        assert "1.36" in markdown or "1.70" in markdown
    if name == "cw-table6":
        assert "mean_logit_l1_distilled" in record["diagnostics"]
        assert "fails (Sec. VIII)" in markdown


@pytest.mark.skipif(locate("mnist") is None, reason="needs MNIST (ROBUSTLAB_DATA)")
def test_zoo_models_are_attacked_as_shipped(tmp_path):
    """mnist-tiny (a small MLP) stands for both zoo models: loaded as shipped, nothing trained."""
    from robustlab import zoo

    tiny = {**TINY, "dataset": "mnist", "zoo_natural": "mnist-tiny", "zoo_distilled": "mnist-tiny"}
    result = run_reproduction("cw-table6", ReproOptions(images=1, out=tmp_path, cache_dir=tmp_path / "models",
                                                        overrides=tiny))
    for info in (result.record["model"], result.record["natural_model"]):
        assert info["source"] == "zoo:mnist-tiny" and not info["trained_here"]
        assert info["sha256"] == zoo.card("mnist-tiny").extra["zoo"]["sha256"]
        assert 0.8 < info["test_accuracy"] < 0.95  # its card: 88.6% on the first 1000 test images
    assert "zoo:mnist-tiny as shipped" in result.markdown and "Models trained here" not in result.markdown
    assert not (tmp_path / "models").exists()
    with pytest.raises(RobustlabError, match="trained on 'mnist'"):
        run_reproduction("cw-table4", ReproOptions(images=1, out=tmp_path, overrides={**tiny, "dataset": "digits"}))


def test_the_default_scale_attacks_cws_network_from_the_zoo():
    # C&W's small-cnn with their recipes (natural; distilled at T = 100), as shipped; --full trains the paper's.
    from robustlab import zoo
    from robustlab.reproduce import cw

    assert (cw.CPU_SCALE.zoo_natural, cw.CPU_SCALE.zoo_distilled) == ("mnist-natural-cnn", "mnist-distilled")
    assert cw.FULL_SCALE.zoo_natural is None and cw.FULL_SCALE.zoo_distilled is None
    for name in ("mnist-natural-cnn", "mnist-distilled"):
        assert name in zoo.names() and zoo.recipe(name)["model"] == "small-cnn"
    assert zoo.recipe("mnist-distilled")["options"]["temperature"] == cw.CPU_SCALE.temperature


def test_model_cache_is_reused(tmp_path, cache):
    options = ReproOptions(images=1, out=tmp_path, cache_dir=cache, overrides=TINY)
    run_reproduction("cw-table4", options)
    again = run_reproduction("cw-table4", options)
    assert again.record["model"]["cached"] is True


def test_cli_runs_a_tiny_reproduction(tmp_path, cache, monkeypatch, capsys):
    from robustlab.reproduce import cw

    monkeypatch.setattr(cw, "CPU_SCALE", cw.Scale(**{**TINY, "model_args": {"hidden": [64]}}))
    code = main(["reproduce", "cw-table4", "--images", "1", "--out", str(tmp_path), "--cache-dir", str(cache), "-q"])
    assert code == 0
    assert (tmp_path / "cw-table4.json").exists() and "Table IV" in capsys.readouterr().out


def test_bad_requests_are_clear_errors(tmp_path):
    with pytest.raises(RobustlabError, match="unknown reproduction"):
        run_reproduction("nope", ReproOptions(out=tmp_path))
    with pytest.raises(RobustlabError, match="overrides"):
        run_reproduction("cw-table4", ReproOptions(out=tmp_path, overrides={"bogus": 1}))
    with pytest.raises(RobustlabError, match="images"):
        run_reproduction("cw-table4", ReproOptions(out=tmp_path, images=0))


def test_targeted_cases_best_average_worst():
    # 2 images x 3 targets; image 0: all succeed (1, 2, 3); image 1: one fails (4, fail, 6).
    success = torch.tensor([True, True, True, True, False, True])
    distance = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, 6.0])
    cases = targeted_cases(success, distance, 2)
    assert cases["best"] == {"prob": 1.0, "mean": pytest.approx(2.5)}
    assert cases["average"]["prob"] == pytest.approx(5 / 6) and cases["average"]["mean"] == pytest.approx(16 / 5)
    assert cases["worst"] == {"prob": 0.5, "mean": pytest.approx(3.0)}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ROBUSTLAB_DATA"), reason="needs MNIST via ROBUSTLAB_DATA")
@pytest.mark.parametrize("name", CW_TABLES)
def test_cpu_scale_reproduction(name, tmp_path):
    """The default CPU-scale run on MNIST (minutes each); C&W must not be stopped by distillation."""
    result = run_reproduction(name, ReproOptions(out=tmp_path))
    if name == "cw-table6":
        assert result.record["cw_not_stopped"]
    if name in ("cw-table4", "cw-table6"):
        l2 = next(row for row in result.record["rows"] if row["attack"] == "C&W L2")
        assert l2["ours"]["best"]["prob"] >= 0.95
