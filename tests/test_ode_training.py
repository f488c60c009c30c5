"""Tests for training ODE models through the shared loop (Gaussian-noise augmentation and TisODE's
steady-state term), the ODE gradient-masking checks, and the TisODE reproductions."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustlab import zoo
from robustlab.data import locate
from robustlab.errors import RobustlabError
from robustlab.models import build_model
from robustlab.models.ode import ODEBlock, logits_and_steady_state, ode_gradient_check
from robustlab.training import METHODS, TrainConfig, train
from robustlab.training.methods import Batch, make_method

pytestmark = pytest.mark.usefixtures("single_thread")

DIGITS = (1, 8, 8)
HAS_TORCHDIFFEQ = importlib.util.find_spec("torchdiffeq") is not None


def _batch(x, y, epoch: int = 1) -> Batch:
    return Batch(x, y, torch.arange(len(y)), epoch=epoch)


def _tisode(seed: int = 0, **kwargs):
    return build_model("tisode", input_shape=DIGITS, num_classes=10, channels=4, seed=seed, **kwargs)


# -- the training methods ----------------------------------------------------------------------------------------
def test_gaussian_noise_method_augments_about_half_on_the_255_scale_and_reproducibly():
    x = torch.full((400, 1, 8, 8), 0.5)
    y = torch.zeros(400, dtype=torch.int64)
    config = TrainConfig(method="gaussian-noise", seed=3)
    method = make_method(config)
    out = method.make_inputs(None, _batch(x, y))
    changed = (out != x).flatten(1).any(dim=1)
    assert 0.4 < float(changed.float().mean()) < 0.6
    assert bool(((out >= 0) & (out <= 1)).all())
    # Per noisy image the std is sigma / 255 for sigma in {50, 75, 100} (clamping at 0.5 +- 2.5 std is rare).
    stds = (out[changed] - 0.5).flatten(1).std(dim=1) * 255
    assert float(stds.min()) > 35 and float(stds.max()) < 120
    assert {round(float(s) / 25) * 25 for s in stds} == {50, 75, 100}

    again = make_method(config).make_inputs(None, _batch(x, y))
    assert torch.equal(out, again)
    other = make_method(TrainConfig(method="gaussian-noise", seed=4)).make_inputs(None, _batch(x, y))
    assert not torch.equal(out, other)


def test_gaussian_noise_method_state_round_trips_and_respects_the_threat_box():
    method = make_method(TrainConfig(method="gaussian-noise", method_options={"probability": 1.0}))
    x, y = torch.full((8, 1, 8, 8), 0.5), torch.zeros(8, dtype=torch.int64)
    state = method.state_dict()
    first = method.make_inputs(None, _batch(x, y))
    method.load_state_dict(state)
    assert torch.equal(method.make_inputs(None, _batch(x, y)), first)
    assert bool((first != x).flatten(1).any(dim=1).all())

    boxed = make_method(TrainConfig(method="gaussian-noise", method_options={"probability": 1.0},
                                    threat={"norm": "Linf", "eps": 0.1, "bounds": (0.4, 0.6)}))
    out = boxed.make_inputs(None, _batch(x, y))
    assert float(out.min()) == pytest.approx(0.4) and float(out.max()) == pytest.approx(0.6)


@pytest.mark.parametrize("method, options, match", [
    ("gaussian-noise", {"sigmas": []}, "sigmas"),
    ("gaussian-noise", {"sigmas": [50, -1]}, "sigmas"),
    ("gaussian-noise", {"sigmas": "50"}, "sigmas"),
    ("gaussian-noise", {"probability": 1.5}, "probability"),
    ("gaussian-noise", {"steady_weight": 0.1}, "unknown option"),
    ("tisode", {"steady_weight": -0.1}, "steady_weight"),
    ("tisode", {"steady_from_epoch": 1.5}, "steady_from_epoch"),
    ("tisode", {"steady_from_epoch": -1}, "steady_from_epoch"),
])
def test_bad_options_fail_when_the_config_is_made(method, options, match):
    with pytest.raises(RobustlabError, match=match):
        TrainConfig(method=method, method_options=options)


def test_steady_state_term_switches_on_at_the_0_based_epoch(digits):
    x, y = digits[0][:16], digits[1][:16]
    model = _tisode().eval()
    method = make_method(TrainConfig(method="tisode", method_options={"steady_from_epoch": 2, "steady_weight": 0.5}))
    with torch.no_grad():
        logits, penalty = logits_and_steady_state(model, x)
        off = method.loss(model, x, _batch(x, y, epoch=2))
        on = method.loss(model, x, _batch(x, y, epoch=3))
    ce = F.cross_entropy(logits, y)
    assert float(penalty.mean()) > 0
    assert float(off.loss) == pytest.approx(float(ce), rel=1e-6)
    assert float(on.loss) == pytest.approx(float(ce + 0.5 * penalty.mean()), rel=1e-6)
    assert torch.allclose(on.logits, logits)


def test_tisode_method_needs_a_tisode_model(digits):
    x, y = digits[0][:4], digits[1][:4]
    method = make_method(TrainConfig(method="tisode"))
    model = build_model("odenet", input_shape=DIGITS, num_classes=10, channels=4, seed=0)
    with pytest.raises(RobustlabError, match="TisODE block"):
        method.loss(model, x, _batch(x, y, epoch=1))


def test_methods_are_registered():
    assert METHODS["gaussian-noise"].name == "gaussian-noise" and METHODS["tisode"].name == "tisode"


def _trained_penalty(digits, weight: float) -> tuple[float, list[dict]]:
    x, y = digits[0][:128], digits[1][:128]
    model = _tisode(seed=1)
    config = TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant",
                         method="tisode", method_options={"steady_weight": weight, "steady_from_epoch": 0},
                         robust_eval_samples=0, seed=0)
    history = train(model, x, y, config=config).history
    with torch.no_grad():
        return float(logits_and_steady_state(model.eval(), x)[1].mean()), history


def test_the_shared_loop_trains_tisode_and_the_steady_term_shrinks_the_dynamics(digits):
    free, history = _trained_penalty(digits, 0.0)
    regularized, _ = _trained_penalty(digits, 20.0)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Same seed, data and steps: without the term's effect the two runs would be identical.
    assert regularized < 0.75 * free, (free, regularized)


# -- gradient checks ---------------------------------------------------------------------------------------------
def test_gradient_check_compares_solvers_and_restores_the_model(digits):
    x, y = digits[0][:8], digits[1][:8]
    coarse = build_model("odenet", input_shape=DIGITS, num_classes=10, channels=4, seed=0, step_size=0.5)
    coarse.train()
    check = ode_gradient_check(coarse, x, y, variants=("euler", "rk4"))
    block = next(m for m in coarse.modules() if isinstance(m, ODEBlock))
    assert block.solver == "euler" and not block.adjoint and coarse.training
    assert check["reference"] == {"solvers": ["euler"], "adjoint": [False]}
    assert check["skipped"] == {"euler": "the model's own configuration"}
    rk4 = check["variants"]["rk4"]
    # Two Euler steps vs two RK4 steps: the same ODE, visibly different numerics.
    assert rk4["relative_max"] > 1e-4 and rk4["logit_change_max"] > 1e-5
    assert 0.5 < rk4["cosine_mean"] <= 1.0 + 1e-9

    fine = build_model("odenet", input_shape=DIGITS, num_classes=10, channels=4, seed=0, step_size=0.01)
    close = ode_gradient_check(fine, x, y, variants=("rk4",))["variants"]["rk4"]
    assert close["cosine_min"] > 0.999 and close["relative_max"] < 0.05 and close["same_prediction"] == 1.0
    assert close["relative_max"] < rk4["relative_max"]


def test_gradient_check_rewinds_the_random_draw_of_input_randomization(digits):
    x, y = digits[0][:8], digits[1][:8]
    model = _tisode(input_randomization=True, randomization_seed=5, step_size=0.01)
    state = model.generator.get_state()
    check = ode_gradient_check(model, x, y, variants=("euler", "rk4"))
    assert torch.equal(model.generator.get_state(), state)
    # Same draw for both passes, so only the solver differs, and at step 0.01 hardly at all; two
    # different random resizes and paddings would give unrelated input gradients.
    assert check["variants"]["rk4"]["cosine_min"] > 0.999


def test_gradient_check_reports_missing_torchdiffeq_or_compares_the_adjoint(digits):
    x, y = digits[0][:4], digits[1][:4]
    check = ode_gradient_check(_tisode(step_size=0.01), x, y, variants=("adjoint", "dopri5"))
    if HAS_TORCHDIFFEQ:
        # The adjoint re-integrates backwards with its own discretization error, so it matches
        # direct back-propagation only at a fine step (at the paper's 0.05-0.1 the cosine can
        # drop to 0.6-0.9 on a small net).
        adjoint = check["variants"]["adjoint"]
        assert adjoint["cosine_min"] > 0.98 and adjoint["relative_max"] < 0.25
        assert 0 < check["variants"]["dopri5"]["same_prediction"] <= 1
    else:
        assert set(check["skipped"]) == {"adjoint", "dopri5"} and "torchdiffeq" in check["skipped"]["adjoint"]
        assert check["variants"] == {}


def test_gradient_check_rejects_models_without_ode_blocks_and_bad_variants(digits):
    x, y = digits[0][:2], digits[1][:2]
    with pytest.raises(RobustlabError, match="ODE block"):
        ode_gradient_check(build_model("ode-cnn", input_shape=DIGITS, num_classes=10, channels=4), x, y)
    with pytest.raises(RobustlabError, match="variants"):
        ode_gradient_check(_tisode(), x, y, variants=("heun",))


@pytest.mark.skipif(not HAS_TORCHDIFFEQ, reason="torchdiffeq is optional")
def test_adjoint_model_matches_direct_backprop_gradients(digits):
    x, y = digits[0][:4], digits[1][:4]
    model = build_model("odenet", input_shape=DIGITS, num_classes=10, channels=4, seed=0, adjoint=True,
                        step_size=0.01)
    check = ode_gradient_check(model, x, y, variants=("adjoint", "euler"))
    assert check["skipped"] == {"adjoint": "the model's own configuration"}
    assert check["reference"]["adjoint"] == [True]
    assert check["variants"]["euler"]["cosine_min"] > 0.98


@pytest.mark.slow
def test_diagnostics_pass_on_a_trained_tisode(digits):
    from robustlab.evaluation import diagnose
    from robustlab.threat import Linf

    x, y = digits[0][:512], digits[1][:512]
    model = build_model("tisode", input_shape=DIGITS, num_classes=10, channels=16, seed=0)
    # Without augmentation: noisy 8x8 digits take this small net far longer to learn.
    config = TrainConfig(epochs=6, batch_size=64, optimizer="adam", lr=3e-2, weight_decay=0.0, schedule="constant",
                         method="tisode", method_options={"steady_from_epoch": 0, "probability": 0.0},
                         robust_eval_samples=0)
    train(model, x, y, config=config)
    x_test, y_test = digits[2][:40], digits[3][:40]
    with torch.no_grad():
        assert float((model(x_test).argmax(1) == y_test).float().mean()) > 0.7
    checks = ("probabilities", "stochastic", "zero-gradients", "non-differentiable", "one-step", "loss-rises")
    diagnosis = diagnose(model, x_test, y_test, threat=Linf(eps=0.2), steps=20, checks=checks)
    assert [f.check for f in diagnosis.findings] == list(checks)
    # A plain Euler TisODE has honest gradients: no check may fire.
    assert diagnosis.verdict == "pass", diagnosis.markdown()


# -- reproductions -----------------------------------------------------------------------------------------------
TINY = {"zoo": False, "dataset": "digits", "train_samples": 96, "epochs": 1, "batch_size": 48, "lr": 1e-2, "channels": 4,
        "seeds": 2, "steady_from_epoch": 0, "pgd_steps": 2, "eot_draws": 2, "suite": "quick", "suite_images": 6,
        "fgsm_eps": (0.3,), "pgd": ((0.3, 0.1),), "suite_eps": (0.3,)}


def test_tisode_tables_are_registered_and_table3_keeps_the_paper_numbers():
    from robustlab.reproduce import REPRODUCTIONS
    from robustlab.reproduce.tisode import TABLES

    assert {f"tisode-table{i}" for i in range(1, 5)} <= set(REPRODUCTIONS)
    assert all("CPU" in REPRODUCTIONS[name].budget for name in TABLES)
    assert TABLES["tisode-table3"].paper["fgsm-0.3"]["TisODE"] == "75.7 ± 1.4"
    assert TABLES["tisode-table4"].models == ("CNN", "CNN-FDn", "TisODE-FDn", "CNN-IRd", "TisODE-IRd")
    assert not TABLES["tisode-table1"].noise_training and TABLES["tisode-table2"].noise_training


def test_training_configs_use_the_shared_methods():
    from robustlab.reproduce.tisode import CPU_SCALE, FULL_SCALE, TABLES, train_config

    assert train_config("CNN", TABLES["tisode-table1"], CPU_SCALE, 0).method == "natural"
    assert train_config("ODENet", TABLES["tisode-table2"], CPU_SCALE, 0).method == "gaussian-noise"
    tisode = train_config("TisODE-IRd", TABLES["tisode-table4"], CPU_SCALE, 0)
    assert tisode.method == "tisode" and tisode.method_options["steady_weight"] == 0.01
    assert tisode.optimizer == "adam" and tisode.gamma == 0.2
    # The paper's schedule at full scale; the CPU scale's faster one (see the module docstring).
    full = train_config("TisODE", TABLES["tisode-table3"], FULL_SCALE, 0)
    assert (full.lr, full.milestones, full.epochs) == (1e-3, (0.3, 0.6, 0.9), 100)
    assert (tisode.lr, tisode.milestones) == (1e-2, (0.8,))


def test_survival_verdict_treats_a_tie_as_no_advantage():
    from robustlab.reproduce.tisode import CPU_SCALE, _survives

    def column(mean):
        return {"mean": mean, "std": 0.0, "runs": [mean]}

    scale = CPU_SCALE.__class__(suite="standard", suite_eps=(0.2,))
    tied = {"CNN": {"pgd-0.2": column(5.0), "standard-0.2": column(0.0)},
            "TisODE": {"pgd-0.2": column(30.0), "standard-0.2": column(0.0)}}
    verdict = _survives(tied, scale)["standard-0.2"]
    assert verdict["all_tied"] and not verdict["same_best"] and verdict["best_plain"] == ["TisODE"]
    kept = {**tied, "TisODE": {"pgd-0.2": column(30.0), "standard-0.2": column(10.0)}}
    verdict = _survives(kept, scale)["standard-0.2"]
    assert verdict["same_best"] and verdict["best_suite"] == ["TisODE"] and not verdict["all_tied"]
    flipped = {**tied, "CNN": {"pgd-0.2": column(5.0), "standard-0.2": column(2.5)}}
    assert not _survives(flipped, scale)["standard-0.2"]["same_best"]


def test_tisode_table4_smoke_with_eot_suite_and_cache(tmp_path):
    from robustlab.reproduce import ReproOptions, run_reproduction

    tiny = {**TINY, "models": ("CNN", "TisODE-IRd")}
    options = ReproOptions(images=12, out=tmp_path, cache_dir=tmp_path / "cache", overrides=tiny)
    first = run_reproduction("tisode-table4", options)
    record = first.record
    cnn, irn = record["results"]["CNN"], record["results"]["TisODE-IRd"]
    assert "eot-pgd-0.3" in irn and "eot-pgd-0.3" not in cnn
    assert {"clean", "gaussian-100", "fgsm-0.3", "pgd-0.3", "quick-0.3"} <= set(cnn)
    assert all(len(column["runs"]) == 2 for column in cnn.values())
    for columns in record["results"].values():
        assert all(0 <= c["mean"] <= 100 for c in columns.values())
        # The worst case over a cascade can only be at most the clean accuracy.
        assert columns["quick-0.3"]["mean"] <= columns["clean"]["mean"]
    assert record["training"]["TisODE-IRd"][0]["steady_state"] > 0
    assert record["training"]["CNN"][0]["steady_state"] is None
    assert record["survives"]["quick-0.3"]["compared_with"] == "pgd-0.3"
    assert (tmp_path / "tisode-table4.json").exists()

    assert all(r["columns_stored"] == 0 for runs in record["training"].values() for r in runs)
    again = run_reproduction("tisode-table4", options)
    for label, runs in again.record["training"].items():  # every column but the clean one read back
        assert all(r["cached"] and r["columns_stored"] == len(record["results"][label]) - 1 for r in runs)
        assert all(r["stored_seconds"] > 0 for r in runs)  # how long the stored columns took when computed
    assert again.record["results"] == record["results"]
    assert "cells were read from the column store" not in first.markdown
    # two seeds of 6 and 9 columns, all but the 4 clean cells read back
    assert "26 of the 30 cells were read from the column store" in again.markdown
    assert "s of wall time when computed" in again.markdown
    # Each model's suite column kept its per-image state (2 rows x 2 seeds, each its own model; one
    # suite eps), so a killed run resumes it; with the stored columns gone, the suite columns are
    # read back from those states.
    states = sorted((tmp_path / "cache" / "tisode-states").glob("*/*.json"))
    assert len(states) == 4 and len({state.parent for state in states}) == 4
    for stored in (tmp_path / "cache" / "tisode-columns").iterdir():
        stored.unlink()
    assert run_reproduction("tisode-table4", options).record["results"] == record["results"]
    # The columns computed anew, states and all, give the same numbers (each column's draws seeded).
    for stored in [*(tmp_path / "cache" / "tisode-columns").iterdir(), *states]:
        stored.unlink()
    fresh = run_reproduction("tisode-table4", options).record
    assert all(r["columns_stored"] == 0 for runs in fresh["training"].values() for r in runs)
    assert fresh["results"] == record["results"]
    # Table 2 shares the CNN and its columns: nothing of it is trained or attacked again.
    shared = run_reproduction("tisode-table2", ReproOptions(images=12, out=tmp_path, cache_dir=tmp_path / "cache",
                                                            overrides={**TINY, "models": ("CNN",)})).record
    assert shared["results"]["CNN"] == record["results"]["CNN"]
    assert all(r["cached"] and r["columns_stored"] == len(record["results"]["CNN"]) - 1
               for r in shared["training"]["CNN"])
    assert "| TisODE-IRd |" in again.markdown and "86.8 ± 2.3" in again.markdown


def test_tisode_table1_smoke_trains_naturally(tmp_path):
    from robustlab.reproduce import ReproOptions, run_reproduction

    tiny = {**TINY, "seeds": 1, "suite": None, "sigmas": (100.0,)}
    result = run_reproduction("tisode-table1", ReproOptions(images=12, out=tmp_path, cache_dir=tmp_path,
                                                            overrides=tiny))
    record = result.record
    assert set(record["results"]) == {"CNN", "ODENet"} and record["survives"] == {}
    assert record["training"]["ODENet"][0]["final"]["train_loss"] > 0
    assert "56.4 ± 5.6" in result.markdown
    with pytest.raises(RobustlabError, match="overrides"):
        run_reproduction("tisode-table1", ReproOptions(out=tmp_path, overrides={"bogus": 1}))


def test_every_row_maps_to_the_zoo_model_of_its_network_and_training():
    """The zoo model of each row has the row's architecture, denoising / randomization and
    training (natural for Table 1, Gaussian noise, with the steady-state term for TisODE, after)."""
    from robustlab.reproduce.tisode import FDN, MODELS, ZOO_MODELS

    assert set(ZOO_MODELS[True]) == set(MODELS) and set(ZOO_MODELS[False]) == {"CNN", "ODENet"}
    for noise, rows in ZOO_MODELS.items():
        for label, name in rows.items():
            recipe, (architecture, arguments) = zoo.recipe(name), MODELS[label]
            assert recipe["model"] == architecture, name
            assert ("denoise=" + FDN in recipe.get("model_arg", "")) == ("denoise" in arguments), name
            assert (recipe.get("defense") == ["resize-pad"]) == bool(arguments.get("input_randomization")), name
            method = ("tisode" if architecture == "tisode" else "gaussian-noise") if noise else "natural"
            assert recipe["method"] == method, name
            assert recipe["dataset"] == "mnist" and recipe.get("model_arg", "").count("channels") == 0, name


@pytest.mark.skipif(locate("mnist") is None, reason="needs MNIST (ROBUSTLAB_DATA)")
def test_tables_attack_the_zoo_models_by_default(tmp_path):
    """The default scale reads the shipped zoo model of each row (no training) and attacks the
    first test images, the cards' images."""
    from robustlab.data import load_dataset
    from robustlab.reproduce import ReproOptions, run_reproduction
    from robustlab.reproduce.tisode import CPU_SCALE

    assert CPU_SCALE.zoo and CPU_SCALE.seeds == 1 and CPU_SCALE.images == 1000
    small = {"models": ("ODENet",), "sigmas": (100.0,), "fgsm_eps": (0.3,), "pgd": ((0.3, 0.1),), "pgd_steps": 2,
             "suite": "quick", "suite_images": 4, "eval_batch": 8}
    options = ReproOptions(images=8, out=tmp_path, cache_dir=tmp_path / "cache", overrides=small)
    result = run_reproduction("tisode-table2", options)
    record = result.record["training"]["ODENet"][0]
    card = zoo.card("mnist-odenet")
    assert record["source"] == "zoo:mnist-odenet" and not record["trained_here"]
    assert record["sha256"] == card.extra["zoo"]["sha256"] and record["steady_state"] is None
    assert "epochs" not in result.record["scale"] and result.record["scale"]["zoo"]  # no training settings
    # Nothing trained: the cache holds the stored evaluation and the suite's state only.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tisode-columns", "tisode-states"]
    assert result.record["train_samples"] is None
    test = load_dataset("mnist", split="test")
    with torch.no_grad():
        correct = (zoo.load("mnist-odenet")(test.x[:8]).argmax(1) == test.y[:8]).float().mean()
    assert result.record["results"]["ODENet"]["clean"]["mean"] == round(100 * float(correct), 2)
    assert "`mnist-odenet` (as shipped" in result.markdown and "first 8 test images" in result.markdown
    # The paper's attacker beside ours, at each FGSM and PGD setting, with the paper's numbers beside it.
    columns = list(result.record["results"]["ODENet"])
    assert columns[2:6] == ["fgsm-0.3", "paper-fgsm-0.3", "pgd-0.3", "paper-pgd-0.3"]
    assert "| fgsm-0.3: ours | paper-fgsm-0.3: ours | paper | pgd-0.3: ours | paper-pgd-0.3: ours | paper |" in (
        result.markdown)

    with pytest.raises(RobustlabError, match="no natural-trained model"):
        run_reproduction("tisode-table1", ReproOptions(out=tmp_path, overrides={"models": ("TisODE",)}))


def test_a_zoo_model_drawing_from_the_global_rng_gets_a_seeded_generator():
    """An IRd model as the zoo loads it draws from torch's global RNG; the tables seed it, so two
    evaluations with the same seed see the same draws whatever the global RNG did in between."""
    from robustlab.models import RandomResizePad
    from robustlab.reproduce.tisode import _rewind_randomization

    model = RandomResizePad(build_model("mlp", input_shape=(1, 9, 9), num_classes=3, hidden=[4], seed=0).eval())
    x = torch.rand(5, 1, 8, 8)
    _rewind_randomization(model, 3)
    first = model(x)
    torch.rand(7)  # the global RNG moves on
    _rewind_randomization(model, 3)
    assert isinstance(model.generator, torch.Generator) and torch.equal(model(x), first)
    _rewind_randomization(model, 4)
    assert not torch.equal(model(x), first)


@pytest.mark.skipif(locate("mnist") is None, reason="needs MNIST (ROBUSTLAB_DATA)")
def test_a_row_whose_zoo_model_is_not_trained_is_listed_not_evaluated(tmp_path, monkeypatch):
    """A table runs the rows the zoo has and lists the others as not trained yet (no number); with
    none of its models trained it stops with the command that trains them."""
    from robustlab.reproduce import ReproOptions, run_reproduction

    shipped = zoo.names()
    monkeypatch.setattr(zoo, "names", lambda: [name for name in shipped if name != "mnist-ode-cnn"])
    small = {"models": ("CNN", "ODENet"), "sigmas": (), "fgsm_eps": (0.3,), "pgd": (), "suite": None,
             "eval_batch": 8}
    options = ReproOptions(images=8, out=tmp_path, cache_dir=tmp_path / "cache", overrides=small)
    result = run_reproduction("tisode-table2", options)
    assert result.record["not_trained"] == ["CNN"] and list(result.record["results"]) == ["ODENet"]
    rows = [line for line in result.markdown.splitlines() if line.startswith(("| CNN |", "| ODENet |"))]
    # The paper's FGSM number sits beside the column of the paper's attacker.
    assert rows[0] == ("| CNN | not trained yet | not trained yet | 98.7 ± 0.1 | not trained yet | not trained yet | "
                       "54.2 ± 1.1 |")
    assert rows[1].startswith("| ODENet | ")
    assert "CNN: `mnist-ode-cnn` (not trained yet" in result.markdown

    only_cnn = ReproOptions(images=8, out=tmp_path, cache_dir=tmp_path / "cache", overrides={**small, "models": ("CNN",)})
    with pytest.raises(RobustlabError, match="robustlab zoo train mnist-ode-cnn"):
        run_reproduction("tisode-table2", only_cnn)


def _one_pixel_model(weight: float) -> nn.Module:
    """Two classes on one-pixel images: logits w(x - 0.5) and -w(x - 0.5), so class 0 above 0.5,
    and half the log-probability margin has gradient ``weight`` in x."""

    class Linear(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = weight * (x.flatten(1) - 0.5)
            return torch.cat([z, -z], dim=1)

    return Linear()


@pytest.mark.parametrize(("weight", "eps", "step", "iterations", "broken"), [
    (1.0, 0.3, 0.3, 1, True),      # FGSM: one step of eps, 0.7 -> 0.4
    (1.0, 0.1, 0.3, 1, False),     # clipped to the eps-ball: 0.6
    (1.0, 0.3, 0.15, 2, False),    # 0.7 -> 0.55 (evaluated) -> 0.4 (the last update is never evaluated)
    (1.0, 0.3, 0.15, 3, True),     # ... 0.4 evaluated
    (1e-9, 0.3, 0.3, 1, False),    # a gradient of 1e-9 shrinks the step to 1e-9 / (1e-9 + 1e-8) of it
    (1e3, 0.3, 0.3, 1, False),     # softmax saturated in float32: no gradient, no step
])
def test_the_papers_attacker_follows_its_code(weight, eps, step, iterations, broken):
    """Yan et al.'s attacker: sign steps of coordinate Adam with beta1 = beta2 = 0 (``g / (|g| + 1e-8)``)
    on the C&W log-probability margin, clipped to the eps-ball, success judged before each update."""
    from robustlab.reproduce.tisode import paper_attack

    x, y = torch.full((1, 1, 1, 1), 0.7), torch.zeros(1, dtype=torch.long)
    result = paper_attack(_one_pixel_model(weight), x, y, eps=eps, step=step, iterations=iterations)
    assert result.tolist() == [broken]
    # A misclassified clean image counts as broken.
    assert paper_attack(_one_pixel_model(weight), x, torch.ones(1, dtype=torch.long), eps=eps, step=step,
                        iterations=iterations).tolist() == [True]
