"""`robustlab reproduce bilateral-mnist`: the bilateral paper's Tables 5-6 attacks on zoo models."""

from __future__ import annotations

import pytest

from robustlab.attacks import FGSM, PGD
from robustlab.errors import RobustlabError
from robustlab.reproduce import REPRODUCTIONS, ReproOptions, run_reproduction
from robustlab.reproduce.bilateral import COLUMNS, Scale, _attack

pytestmark = pytest.mark.usefixtures("single_thread")


def test_registered_with_a_cpu_budget():
    description, budget, function = REPRODUCTIONS["bilateral-mnist"]
    assert "Tables 5-6" in description and "CPU" in budget and callable(function)


@pytest.mark.parametrize("column, steps, loss", [("CE7", 7, "ce"), ("CE20", 20, "ce"), ("CW20", 20, "margin"),
                                                 ("CE100", 100, "ce"), ("CW100", 100, "margin"),
                                                 ("CW200", 200, "margin")])
def test_the_columns_are_the_authors_pgd_settings(column, steps, loss):
    # eval.sh: untargeted PGD, step eps / 4 (2/255 at 8/255), random start; CW: the margin with confidence 50.
    attack = _attack(column, Scale(eps=0.3))
    assert isinstance(attack, PGD) and attack.steps == steps and attack.loss == loss
    assert attack.step_size == pytest.approx(0.075) and attack.random_start and attack.restarts == 1
    assert attack.kappa == 50.0
    assert isinstance(_attack("FGSM", Scale()), FGSM) and list(COLUMNS)[0] == "FGSM"


def test_the_table_attacks_the_shipped_models_and_lists_the_untrained(tmp_path, monkeypatch):
    """At test size: mnist-tiny at its eps (0.05) on its card's 50 images, beside a zoo model that
    counts as not trained (the zoo is narrowed to mnist-tiny)."""
    from robustlab import zoo
    from robustlab.data import load_dataset, locate
    from robustlab.zoo.build import correct_predictions

    if locate("mnist") is None:
        pytest.skip("needs MNIST (ROBUSTLAB_DATA)")
    monkeypatch.setattr(zoo, "names", lambda: ["mnist-tiny"])
    overrides = {"zoo": ("mnist-tiny", "mnist-bilateral"), "eps": 0.05, "chunk": 50}
    result = run_reproduction("bilateral-mnist", ReproOptions(images=50, out=tmp_path, overrides=overrides))
    tiny, bilateral = result.record["rows"]
    assert not bilateral["trained"] and "| mnist-bilateral | R-MC-LA | not in the zoo yet |" in result.markdown
    test = load_dataset("mnist", split="test")
    ours = tiny["ours"]
    assert ours["clean"] == pytest.approx(
        float(correct_predictions(zoo.load("mnist-tiny"), test.x[:50], test.y[:50]).float().mean()))
    card = zoo.card("mnist-tiny").metrics["standard"]
    assert ours["standard"]["from_card"] and ours["standard"]["robust"] == card["robust_accuracy"]
    # Teeth: the PGD columns bite on the non-robust tiny MLP, more steps never less, and `standard` is lowest.
    assert ours["CE20"] < ours["clean"] - 0.1 and ours["CE100"] <= ours["CE7"] + 0.04
    assert ours["standard"]["robust"] <= min(ours[c] for c in COLUMNS) + 0.04
    assert all(0 <= ours[c] <= ours["clean"] for c in COLUMNS)
    assert "(CIFAR-10, eps 8/255" in result.markdown and "| R-MC-LA | Table 6 (eps_x 8, 3 models) | 90.8 |" in result.markdown
    assert "mnist-tiny (-): the paper's strongest attack here" in result.markdown


def test_unknown_columns_are_refused(tmp_path):
    with pytest.raises(RobustlabError, match=r"unknown bilateral-mnist columns \['CW7'\]"):
        run_reproduction("bilateral-mnist", ReproOptions(out=tmp_path, overrides={"columns": ("CW7",)}))


def test_standard_is_run_here_where_the_card_has_other_images(tmp_path, monkeypatch):
    # 40 images: the card's `standard` is on 50, so the suite runs here on the same 40 as the attacks.
    from robustlab import zoo
    from robustlab.data import locate

    if locate("mnist") is None:
        pytest.skip("needs MNIST (ROBUSTLAB_DATA)")
    monkeypatch.setattr(zoo, "names", lambda: ["mnist-tiny"])
    overrides = {"zoo": ("mnist-tiny",), "eps": 0.05, "columns": ("FGSM", "CE7"), "chunk": 40}
    result = run_reproduction("bilateral-mnist", ReproOptions(images=40, out=tmp_path, overrides=overrides))
    ours = result.record["rows"][0]["ours"]
    standard = ours["standard"]
    assert not standard["from_card"] and standard["images"] == 40
    assert standard["robust"] <= ours["CE7"] + 0.05 and sum(standard["broken_by"].values()) > 0
    assert "| mnist-tiny | - |" in result.markdown and "(40) |" in result.markdown
