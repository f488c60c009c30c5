"""`robustlab reproduce athalye-table1`: every row of the seed's table at a minuscule size, the
diagnostics fire where the defense masks gradients, and the markdown carries the seed's numbers."""

from __future__ import annotations

import json

import pytest

from robustlab.errors import RobustlabError
from robustlab.reproduce import REPRODUCTIONS, ReproOptions, run_reproduction
from robustlab.reproduce.athalye import TABLE1

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]

#: Test-only size: scikit-learn digits (no download), a small MLP, a few steps everywhere.
TINY = {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [32]}, "train_samples": 400, "epochs": 2,
        "lr": 3e-3, "costly_images": 6, "steps": 3, "long_steps": 4, "eot_draws": 2, "adversarial_steps": 2,
        "adversarial_epochs": 2, "cascade_samples": 100, "thermometer_levels": 4, "pixel_dataset": "digits",
        "pixel_eps": 0.2, "pixel_levels": 5, "pixel_window": 1, "pixel_samples": 100,
        "pixel_steps": 2, "gan_samples": 200, "gan_width": 32, "gan_latent": 4, "gan_iterations": 10, "gan_lr": 1e-3,
        "projection_steps": 4, "projection_restarts": 2, "reparam_steps": 3, "lid_pool": 150, "diagnose_images": 4}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("athalye")
    result = run_reproduction("athalye-table1", ReproOptions(images=24, out=out, cache_dir=out / "models",
                                                            overrides=TINY))
    return result, out


def test_registered_with_a_cpu_budget():
    description, budget, function = REPRODUCTIONS["athalye-table1"]
    assert "Athalye" in description and "CPU" in budget and callable(function)


def test_tiny_run_has_every_row_with_the_seed_numbers(tiny_run):
    result, out = tiny_run
    record = json.loads((out / "athalye-table1.json").read_text())
    rows = record["rows"]
    assert [r["defense"] for r in rows] == [r.defense for r in TABLE1]
    by = {r["defense"]: r for r in rows}
    assert by["defense-gan"]["seed_accuracy"] == 0.55 and by["madry"]["seed_accuracy"] == 0.47
    assert by["cascade"]["seed_distance"] == "0.015 (ℓ∞)" and by["jpeg"]["threat"].startswith("L2")
    for r in rows:
        for key in ("clean", "own_accuracy", "prescribed_accuracy"):
            assert 0.0 <= r[key] <= 1.0, (r["defense"], key)
        assert r["images"] == (6 if r["defense"] in ("pixeldefend", "defense-gan") else 24)
    # the diagnostics see what each defense does to gradients
    for name in ("thermometer", "jpeg", "pixeldefend", "defense-gan"):
        assert "zero-gradients" in by[name]["diagnostics"]["fired"], name
    for name in ("sap", "resize-pad", "defense-gan"):
        assert "stochastic" in by[name]["diagnostics"]["fired"], name
    for name in ("madry", "cascade", "lid"):
        assert "zero-gradients" not in by[name]["diagnostics"]["fired"] and \
            "stochastic" not in by[name]["diagnostics"]["fired"], name
    # the prescribed attack can only do better than an attack that sees zero gradients
    for name in ("thermometer", "jpeg"):
        assert by[name]["prescribed_accuracy"] <= by[name]["own_accuracy"], name
    assert 0.0 <= by["defense-gan"]["in_principle_accuracy"] <= 1.0
    markdown = (out / "athalye-table1.md").read_text()
    assert markdown == result.markdown and "55%**" in markdown and "Test-only overrides" in markdown


@pytest.mark.slow
def test_cached_models_are_reused(tiny_run):
    _, out = tiny_run
    record = json.loads((out / "athalye-table1.json").read_text())
    again = run_reproduction("athalye-table1", ReproOptions(images=4, out=out / "again", cache_dir=out / "models",
                                                           overrides={**TINY, "costly_images": 2}))
    assert all(info["cached"] for info in again.record["models"].values())
    assert again.record["models"].keys() == record["models"].keys()


def test_unknown_override_is_refused(tmp_path):
    with pytest.raises(RobustlabError, match="overrides"):
        run_reproduction("athalye-table1", ReproOptions(out=tmp_path, overrides={"epoch": 1}))
