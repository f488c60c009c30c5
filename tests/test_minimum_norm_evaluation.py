"""Minimum-norm evaluation (robust accuracy at every eps from one unbounded run) and the C&W
targeted protocol (best / average / worst case over the K - 1 targets)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from robustlab.attacks import DDN, FGSM, FMN, PGD, DeepFool
from robustlab.errors import RobustlabError
from robustlab.evaluation import (
    BEST,
    CASES,
    CLEAN,
    DistanceMismatchWarning,
    MinimumNormEvaluation,
    TargetedEvaluation,
    evaluate,
    evaluate_minimum_norm,
    evaluate_targeted,
)
from robustlab.report.markdown import minimum_norm_markdown, targeted_markdown
from robustlab.settings import RunSettings
from robustlab.threat import L2, Linf

pytestmark = pytest.mark.usefixtures("single_thread")

UNBOUNDED_L2 = L2(math.inf)

N = 60  # the first 60 test digits (two of them misclassified by the MLP) ...
EPS_GRID = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 100.0]


@pytest.fixture(scope="module")
def batch(digits, digits_mlp):
    """... plus one more sample given a wrong label, so that clean errors are surely present."""
    _, _, x, y = digits
    x, y = x[:N + 1].clone(), y[:N + 1].clone()
    with torch.no_grad():
        y[N] = (digits_mlp(x[N:]).argmax(1) + 1) % 10
    return x, y


@pytest.fixture(scope="module")
def l2_eval(digits_mlp, batch):
    x, y = batch
    attacks = {"deepfool": DeepFool(), "ddn": DDN(steps=20), "fmn": FMN(steps=20)}
    return evaluate_minimum_norm(digits_mlp, x, y, attacks=attacks, threat=UNBOUNDED_L2,
                                 indices=torch.arange(100, 100 + N + 1), settings=RunSettings(seed=0, batch_size=25))


@pytest.fixture(scope="module")
def weak_eval(digits_mlp, batch):
    """A one-step DeepFool without overshoot: it fails on a good share of the samples (inf)."""
    x, y = batch
    return evaluate_minimum_norm(digits_mlp, x, y, attacks=[DeepFool(steps=1, overshoot=0.0)], threat=UNBOUNDED_L2)


def clean_correct(ev: MinimumNormEvaluation) -> list[dict]:
    return [s for s in ev.samples if s["clean_prediction"] == s["label"]]


# --- the per-sample table -------------------------------------------------------------------


def test_table_records_clean_errors_and_the_best_over_attacks(l2_eval):
    samples = l2_eval.samples
    assert len(samples) == N + 1
    assert [s["index"] for s in samples] == list(range(100, 100 + N + 1))
    wrong = [s for s in samples if s["clean_prediction"] != s["label"]]
    assert len(wrong) >= 1 and samples[N] in wrong
    for s in wrong:
        assert s["distance"] == 0.0 and s["best_attack"] == CLEAN
        assert all(a["distance"] == 0.0 for a in s["attacks"].values())
    for s in clean_correct(l2_eval):
        per_attack = {name: a["distance"] for name, a in s["attacks"].items()}
        assert s["distance"] == min(per_attack.values()) > 0
        assert per_attack[s["best_attack"]] == s["distance"]
    assert l2_eval.columns == ["deepfool", "ddn", "fmn", BEST]
    # every clean-correct sample was attacked by every attack: costs say so
    n_correct = len(clean_correct(l2_eval))
    assert l2_eval.cost["ddn"]["backwards"] == 20 * n_correct
    assert l2_eval.cost["fmn"]["backwards"] == 20 * n_correct
    assert l2_eval.metrics["reported_distance_mismatches"] == {"deepfool": 0, "ddn": 0, "fmn": 0}


def test_distances_are_the_verified_distances_of_a_direct_run(digits_mlp, batch, l2_eval):
    x, y = batch
    keep = torch.tensor([s["clean_prediction"] == s["label"] for s in l2_eval.samples])
    result = DeepFool()(digits_mlp, x[keep], y[keep], threat=L2(eps=math.inf))
    expected = torch.where(result.success, result.distance, torch.full_like(result.distance, math.inf))
    got = torch.tensor([s["attacks"]["deepfool"]["distance"] for s in clean_correct(l2_eval)])
    torch.testing.assert_close(got, expected)
    reported = torch.tensor([s["attacks"]["deepfool"]["reported"] for s in clean_correct(l2_eval)])
    torch.testing.assert_close(reported, result.extras["best_distance"])


# --- the curve ------------------------------------------------------------------------------


def test_curve_is_non_increasing_from_clean_accuracy_to_zero(l2_eval):
    clean = l2_eval.metrics["clean_accuracy"]["value"]
    curve = l2_eval.curve(EPS_GRID)
    assert curve["eps"] == EPS_GRID
    for column in l2_eval.columns:
        values = curve["robust_accuracy"][column]
        assert all(a >= b for a, b in itertools.pairwise(values)), column
        assert values[0] == clean
        assert l2_eval.robust_accuracy_at(1e-12, column) == clean  # eps -> 0+
        assert l2_eval.distance_statistics(column)["success_rate"] == 1.0
        assert values[-1] == 0.0  # every attack broke every sample: nothing survives a huge eps
    # the best-of column is below every attack's at every eps, and strictly informative somewhere
    best = curve["robust_accuracy"][BEST]
    for name in l2_eval.attacks:
        assert all(b <= a for a, b in zip(curve["robust_accuracy"][name], best))
    assert any(0 < v < clean for v in best)


def test_robust_accuracy_at_matches_the_per_sample_table(l2_eval, weak_eval):
    for ev in (l2_eval, weak_eval):
        n = len(ev.samples)
        medians = [ev.distance_statistics(c)["median_successful"] for c in ev.columns]
        for eps in [0.0, 0.05, 0.37, 0.6, *medians, 3.0, math.inf]:
            for column in ev.columns:
                dist = ev.distances(column)
                broken_or_wrong = sum(1 for s, d in zip(ev.samples, dist)
                                      if s["clean_prediction"] != s["label"] or (d <= eps and math.isfinite(d)))
                assert ev.robust_accuracy_at(eps, column) == (n - broken_or_wrong) / n
    # a sample exactly at its distance counts as broken (d <= eps)
    d = clean_correct(l2_eval)[0]["distance"]
    assert l2_eval.robust_accuracy_at(d) < l2_eval.robust_accuracy_at(math.nextafter(d, 0.0))


def test_failures_are_inf_and_never_broken(weak_eval):
    stats = weak_eval.distance_statistics()
    assert 0 < stats["success_rate"] < 1
    failed = [s for s in clean_correct(weak_eval) if math.isinf(s["distance"])]
    assert failed and all(s["best_attack"] is None for s in failed)
    assert weak_eval.robust_accuracy_at(1e9) == len(failed) / len(weak_eval.samples)
    assert weak_eval.robust_accuracy_at(math.inf) == len(failed) / len(weak_eval.samples)
    finite = sorted(s["distance"] for s in clean_correct(weak_eval) if math.isfinite(s["distance"]))
    assert stats["mean_successful"] == pytest.approx(sum(finite) / len(finite))
    assert stats["successes"] == len(finite) and stats["attacked"] == len(clean_correct(weak_eval))
    if 2 * len(failed) >= stats["attacked"] + 1:
        assert stats["median"] == math.inf


def test_fixed_eps_evaluation_derived_from_the_curve_agrees(l2_eval):
    for eps in [0.2, 0.45, 0.8]:
        ev = l2_eval.at(eps)
        assert ev.threat.eps == eps and ev.threat.norm == "L2"
        m = ev.metrics
        assert m["robust_accuracy"]["value"] == l2_eval.robust_accuracy_at(eps)
        for name in l2_eval.attacks:
            assert m["robust_accuracy_per_attack"][name]["value"] == l2_eval.robust_accuracy_at(eps, name)


@pytest.mark.parametrize("attack", [DeepFool(), FMN(steps=20)], ids=["deepfool", "fmn"])
def test_bounded_run_breaks_every_sample_whose_unbounded_distance_fits(digits_mlp, batch, attack):
    """Running the same attack with a bounded threat at eps succeeds wherever the unbounded
    run found a distance <= eps (the template's projection onto the ball is then a no-op)."""
    x, y = batch
    mn = evaluate_minimum_norm(digits_mlp, x, y, attacks=[attack], threat=UNBOUNDED_L2)
    keep = torch.tensor([s["clean_prediction"] == s["label"] for s in mn.samples])
    distance = torch.tensor(mn.distances(attack.name))[keep]
    for eps in [0.3, float(distance.median()), 0.7]:
        threat = L2(eps=eps)
        result = attack(digits_mlp, x[keep], y[keep], threat=threat, generator=torch.Generator().manual_seed(0))
        fits = distance <= eps
        assert fits.any() and (~fits).any()
        assert result.success[fits].all()
        # and evaluate() at the same eps reports at most the curve's robust accuracy
        fixed = evaluate(digits_mlp, x, y, threat=threat, attacks=[attack]).metrics["robust_accuracy"]["value"]
        assert fixed <= mn.robust_accuracy_at(eps)


def test_batch_size_does_not_change_the_results(digits_mlp, batch, l2_eval):
    x, y = batch
    small = evaluate_minimum_norm(digits_mlp, x, y, attacks={"deepfool": DeepFool()}, threat=UNBOUNDED_L2, settings=RunSettings(batch_size=7))
    # equal up to float rounding (BLAS sums in a different order for other batch shapes)
    assert small.distances("deepfool") == pytest.approx(l2_eval.distances("deepfool"), rel=1e-4)


def test_default_grid_spans_zero_to_everything_broken(l2_eval):
    grid = l2_eval.default_eps_grid()
    assert grid[0] == 0.0 and grid == sorted(grid) and len(grid) == 9
    curve = l2_eval.curve()
    assert curve["eps"] == grid and curve["robust_accuracy"][BEST][-1] == 0.0


# --- JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["l2_eval", "weak_eval"])
def test_json_round_trip(which, request, tmp_path):
    ev = request.getfixturevalue(which)
    path = ev.save(tmp_path / "mn.json")
    assert "Infinity" not in path.read_text()  # inf is written as null, as in Evaluation
    back = MinimumNormEvaluation.load(path)
    assert back.samples == ev.samples
    assert back.attacks == ev.attacks and back.cost == ev.cost
    assert back.threat == ev.threat and math.isinf(back.threat.eps)
    assert back.curve(EPS_GRID) == ev.curve(EPS_GRID)
    assert back.distance_statistics() == ev.distance_statistics()
    with pytest.raises(RobustlabError, match="not a targeted"):
        TargetedEvaluation.load(path)


# --- the attack's own bookkeeping is only a cross-check -------------------------------------


@dataclass(frozen=True, kw_only=True)
class BoastfulDeepFool(DeepFool):
    """Claims half the distance it really achieved."""

    name = "boastful"

    def _run(self, oracle, x, y, *, threat, targets, generator):
        x_adv, extras = super()._run(oracle, x, y, threat=threat, targets=targets, generator=generator)
        return x_adv, {**extras, "best_distance": extras["best_distance"] / 2}


def test_reported_distances_that_disagree_warn_and_the_verified_ones_are_used(digits_mlp, batch, l2_eval):
    x, y = batch
    with pytest.warns(DistanceMismatchWarning, match="boastful"):
        ev = evaluate_minimum_norm(digits_mlp, x, y, attacks=[BoastfulDeepFool()], threat=UNBOUNDED_L2)
    assert ev.distances("boastful") == pytest.approx(l2_eval.distances("deepfool"), rel=1e-4)
    assert ev.metrics["reported_distance_mismatches"]["boastful"] == len(clean_correct(ev))


# --- bad input ------------------------------------------------------------------------------


def test_bad_input(digits_mlp, batch):
    x, y = batch
    with pytest.raises(RobustlabError, match="minimum-norm"):
        evaluate_minimum_norm(digits_mlp, x, y, attacks=[PGD(steps=2)], threat=Linf(math.inf))
    with pytest.raises(RobustlabError, match="minimum-norm"):
        evaluate_targeted(digits_mlp, x, y, attack=FGSM(), threat=Linf(math.inf))
    with pytest.raises(RobustlabError, match="not the string 'L2'"):
        evaluate_minimum_norm(digits_mlp, x, y, attacks=[DeepFool()], threat="L2")
    with pytest.raises(RobustlabError, match=r"unbounded: pass L2\(math.inf.*not eps=0.5"):
        evaluate_targeted(digits_mlp, x, y, attack=DeepFool(), threat=L2(0.5))
    with pytest.raises(RobustlabError, match="supports the norms"):
        evaluate_minimum_norm(digits_mlp, x, y, attacks=[DDN(steps=2)], threat=Linf(math.inf))
    with pytest.raises(RobustlabError, match="not a robustlab Attack"):
        evaluate_minimum_norm(digits_mlp, x, y, attacks=[lambda *a, **k: None], threat=UNBOUNDED_L2)
    with pytest.raises(RobustlabError, match="reserved"):
        evaluate_minimum_norm(digits_mlp, x, y, attacks={BEST: DeepFool()}, threat=UNBOUNDED_L2)
    with pytest.raises(RobustlabError, match="batch_size"):
        evaluate_minimum_norm(digits_mlp, x, y, attacks=[DeepFool()], threat=UNBOUNDED_L2, settings=RunSettings(batch_size=0))
    with pytest.raises(RobustlabError, match="same N"):
        evaluate_minimum_norm(digits_mlp, x, y[:-1], attacks=[DeepFool()], threat=UNBOUNDED_L2)


def test_bad_queries(l2_eval):
    with pytest.raises(RobustlabError, match="eps"):
        l2_eval.robust_accuracy_at(-0.1)
    with pytest.raises(RobustlabError, match="eps"):
        l2_eval.curve([0.1, math.nan])
    with pytest.raises(RobustlabError, match="unknown attack"):
        l2_eval.robust_accuracy_at(0.1, "pgd")


def test_empty_batch(digits_mlp, batch):
    x, y = batch
    ev = evaluate_minimum_norm(digits_mlp, x[:0], y[:0], attacks=[DeepFool()], threat=UNBOUNDED_L2)
    assert ev.samples == [] and math.isnan(ev.robust_accuracy_at(0.5))
    tev = evaluate_targeted(digits_mlp, x[:0], y[:0], attack=DeepFool(), threat=UNBOUNDED_L2)
    assert tev.samples == [] and tev.metrics["runs"] == 0


# --- the C&W targeted protocol --------------------------------------------------------------


def linear_three_class(seed: int = 0):
    """A 3-class linear model on 6 features and 20 points, a box far away (only the norm matters)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 6, generator=g))
        model.bias.zero_()
    x = torch.randn(20, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model.eval(), x, y


def check_cases(ev: TargetedEvaluation, k: int) -> None:
    attacked = [s for s in ev.samples if s["attacked"]]
    assert attacked
    for s in ev.samples:
        assert s["random_target"] != s["label"] and 0 <= s["random_target"] < k
    for s in attacked:
        dist = s["targets"]
        assert sorted(int(t) for t in dist) == sorted(set(range(k)) - {s["label"]})  # K - 1 runs per sample
        assert s["best"] <= s["average"] <= s["worst"]
        assert s["best"] == min(dist.values()) == dist[str(s["best_target"])]
        assert s["worst"] == max(dist.values()) == dist[str(s["worst_target"])]
        assert s["average"] == dist[str(s["random_target"])]
    m = ev.metrics
    assert m["runs"] == (k - 1) * len(attacked)
    for case in CASES:
        assert 0 <= m["cases"][case]["success_rate"] <= 1
    rates = [m["cases"][case]["success_rate"] for case in CASES]
    assert rates[0] >= rates[1] >= rates[2]


def test_targeted_protocol_on_a_linear_three_class_model():
    model, x, y = linear_three_class()
    box = (-10.0, 10.0)
    ev = evaluate_targeted(model, x, y, attack=DeepFool(), threat=L2(math.inf, bounds=box))
    check_cases(ev, 3)
    assert ev.num_classes == 3 and ev.metrics["cases"]["best"]["success_rate"] == 1.0
    # The best case is the untargeted minimal distance: on a linear model DeepFool finds the
    # nearest of the two boundaries exactly (up to its overshoot) in both modes.
    untargeted = evaluate_minimum_norm(model, x, y, attacks=[DeepFool()], threat=L2(math.inf, bounds=box))
    best = torch.tensor(ev.case_distances("best"))
    torch.testing.assert_close(best, torch.tensor(untargeted.distances(), dtype=best.dtype), rtol=1e-4, atol=1e-6)
    # Each targeted distance is at least the distance to the pairwise boundary z_t = z_y.
    w = model.weight.detach()
    for s, xi in zip(ev.samples, x):
        for t, d in s["targets"].items():
            diff = w[int(t)] - w[s["label"]]
            assert d >= float((xi @ diff).abs() / diff.norm()) * (1 - 1e-4)


@pytest.fixture(scope="module")
def digits_targeted(digits_mlp, batch):
    x, y = batch
    return evaluate_targeted(digits_mlp, x[:15], y[:15], attack=DDN(steps=20), threat=UNBOUNDED_L2, settings=RunSettings(seed=3, batch_size=64))


def test_targeted_protocol_on_the_digits_mlp(digits_targeted):
    ev = digits_targeted
    check_cases(ev, 10)
    attacked = sum(s["attacked"] for s in ev.samples)
    assert ev.cost["runs"] == 9 * attacked
    assert ev.cost["backwards"] == 20 * 9 * attacked  # DDN: `steps` backwards per run
    assert ev.metrics["cases"]["best"]["success_rate"] > 0.9
    assert ev.metrics["reported_distance_mismatches"] == 0


def test_targeted_average_case_is_seeded(digits_mlp, batch, digits_targeted):
    x, y = batch
    a = evaluate_targeted(digits_mlp, x[:15], y[:15], attack=DeepFool(), threat=UNBOUNDED_L2, settings=RunSettings(seed=3))
    b = evaluate_targeted(digits_mlp, x[:15], y[:15], attack=DeepFool(), threat=UNBOUNDED_L2, settings=RunSettings(seed=3, batch_size=5))
    c = evaluate_targeted(digits_mlp, x[:15], y[:15], attack=DeepFool(), threat=UNBOUNDED_L2, settings=RunSettings(seed=4))
    targets = [s["random_target"] for s in a.samples]
    assert targets == [s["random_target"] for s in b.samples] == [s["random_target"] for s in digits_targeted.samples]
    assert targets != [s["random_target"] for s in c.samples]
    # Batching over targets changes nothing but float rounding, which can only flip a success that
    # sits on an exact logit tie (DeepFool lands on one for about 1 in 150 runs here).
    flips = 0
    for sa, sb in zip(a.samples, b.samples):
        assert sa["targets"].keys() == sb["targets"].keys()
        for t, d in sa["targets"].items():
            if math.isfinite(d) and math.isfinite(sb["targets"][t]):
                assert d == pytest.approx(sb["targets"][t], rel=1e-4)
            else:
                flips += math.isfinite(d) != math.isfinite(sb["targets"][t])
    assert flips <= 2 and a.metrics["reported_distance_mismatches"] == b.metrics["reported_distance_mismatches"] == 0


def test_targeted_json_round_trip(digits_targeted, tmp_path):
    path = digits_targeted.save(tmp_path / "targeted.json")
    back = TargetedEvaluation.load(path)
    assert back.samples == digits_targeted.samples
    assert back.metrics == digits_targeted.metrics
    with pytest.raises(RobustlabError, match="not a minimum-norm"):
        MinimumNormEvaluation.load(path)


# --- Markdown -------------------------------------------------------------------------------


def test_markdown(l2_eval, weak_eval, digits_targeted):
    text = minimum_norm_markdown(l2_eval, eps_grid=[0.0, 0.5, 1.0])
    assert "| eps | deepfool | ddn | fmn | worst case (best of 3) |" in text
    assert f"| 0.5 | {100 * l2_eval.robust_accuracy_at(0.5, 'deepfool'):.1f}% |" in text
    assert text.count("\n| 1 |") == 1
    stats = weak_eval.distance_statistics()
    assert f"| deepfool | {100 * stats['success_rate']:.1f}% |" in minimum_norm_markdown(weak_eval)
    text = targeted_markdown(digits_targeted)
    for case in CASES:
        assert f"| {case} | " in text
