"""The gradient-masking checks' verdicts pinned to their definitions (algorithms.md §10(c), the module's
docstring), model-free: the attacks are replaced by a script (which samples each run breaks, found from
the run's key through its generator's seed), the model is the identity on logits or a tiny hand-made
module, so every accuracy, paired-test gap, threshold and message is known by hand."""

from __future__ import annotations

import math
import types
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import RobustlabError
from robustlab.evaluation import diagnostics
from robustlab.evaluation.diagnostics import CHECKS, Diagnosis, Finding, _Context, diagnose
from robustlab.threat import L1, L2, Linf

EPS = 0.1
THREAT = Linf(eps=EPS)
KEYS = ["pgd", "apgd-ce", "apgd-dlr", "fgsm", "square", "transfer", "unbounded", "pgd-margin", "pgd-long",
        *(f"pgd@{e:.6g}" for e in (0.05, 0.1, 0.2, 0.4, 0.5, 0.15, 0.6, 1.0, 0.25, 1.0, 2.0))]


def key_seed(seed: int, key: str) -> int:
    return seed * 7919 + zlib.crc32(key.encode())


class Attacks:
    """diagnostics' attacks replaced by a script: ``broken[key]`` the samples the run of ``key`` breaks,
    ``points[key]`` its points (default: the inputs); each run recorded in ``runs[key]``."""

    def __init__(self, monkeypatch, broken=None, points=None, seed=0):
        self.broken, self.points, self.runs = broken or {}, points or {}, {}
        keys = {key_seed(seed, k): k for k in KEYS}
        harness = self

        def fake(kind):
            class Fake:
                def __init__(self, **settings):
                    self.settings = settings

                def __call__(self, model, x, y, *, threat, generator):
                    key = keys[generator.initial_seed()]
                    assert key not in harness.runs  # each run once, its result shared between checks
                    harness.runs[key] = {"attack": kind, "settings": self.settings, "threat": threat, "model": model,
                                         "x": x, "y": y}
                    success = torch.zeros(x.shape[0], dtype=torch.bool)
                    success[sorted(harness.broken.get(key, ()))] = True
                    return types.SimpleNamespace(success=success, x_adv=harness.points.get(key, x.clone()))

            return Fake

        monkeypatch.setattr(diagnostics, "PGD", fake("PGD"))
        monkeypatch.setattr(diagnostics, "APGD", fake("APGD"))
        monkeypatch.setattr(diagnostics, "FGSM", fake("FGSM"))
        monkeypatch.setattr(diagnostics, "build_attack", lambda name, **settings: fake(name)(**settings))


def logits_data(n, k=3, wrong=(), dtype=torch.float32):
    """Inputs that are their own logits (the model is the identity): sample i of class i % k, scored
    0.8 against 0.2, or misclassified (0.8 on the next class) where listed in ``wrong``."""
    y = torch.arange(n) % k
    x = torch.full((n, k), 0.2, dtype=dtype)
    x[torch.arange(n), y] = 0.8
    for i in wrong:
        x[i, y[i]], x[i, (y[i] + 1) % k] = 0.2, 0.8
    return x, y


def check(name, x, y, threat=THREAT, model=None, **kwargs):
    return diagnose(model or nn.Identity(), x, y, threat=threat, checks=(name,), **kwargs)[name]


def pgd_settings(steps=40, eps=EPS, loss="ce"):
    return {"steps": steps, "step_size": 2.5 * eps / 40, "loss": loss}


# --- the paired comparison ---------------------------------------------------------------------


@pytest.mark.parametrize("only_weaker, only_stronger, n, points, expected", [
    (5, 0, 20, 1.0, True),  # 25 points, 5 > 2 sqrt(5) = 4.47
    (4, 0, 20, 1.0, False),  # 4 > 2 sqrt(4) = 4 fails: noise
    (9, 1, 20, 1.0, True),  # gap 8 > 2 sqrt(10) = 6.32
    (8, 2, 20, 1.0, False),  # gap 6 < 6.32
    (2, 9, 20, 1.0, False),  # the other way round
    (5, 0, 400, 1.0, True),  # 1.25 points
    (5, 0, 500, 1.0, False),  # exactly 1 point: not more
    (6, 0, 20, 30.0, False),  # 30 points: not more than 30
    (7, 0, 20, 30.0, True),
])
def test_beats_is_a_paired_test_and_a_points_threshold(only_weaker, only_stronger, n, points, expected):
    x, y = logits_data(n)
    ctx = _Context(nn.Identity(), x, y, THREAT, 40, 0, 1.0, 10, None, torch.ones(n, dtype=torch.bool), 3)
    weaker = torch.ones(n, dtype=torch.bool)  # robust to the supposedly weaker attack
    stronger = torch.ones(n, dtype=torch.bool)
    weaker[:only_weaker] = False  # the weaker attack broke these, the stronger did not
    stronger[only_weaker:only_weaker + only_stronger] = False
    both = slice(only_weaker + only_stronger, only_weaker + only_stronger + 3)
    weaker[both] = stronger[both] = False  # broken by both: no evidence either way
    assert ctx.beats(weaker, stronger, points) is expected


# --- the five signs -------------------------------------------------------------------------------

WHITE = {"pgd": {0, 1}, "apgd-ce": {2, 3}, "apgd-dlr": {4}}  # the white-box attacks leave 15 of 20


def test_one_step_fails_when_fgsm_beats_every_white_box_attack(monkeypatch):
    x, y = logits_data(20)
    attacks = Attacks(monkeypatch, {**WHITE, "fgsm": set(range(10))})
    finding = check("one-step", x, y)
    assert (finding.verdict, finding.numbers) == ("fail", {"fgsm_accuracy": 50.0, "white_box_accuracy": 75.0})
    assert finding.message == ("one-step beats iterative: FGSM leaves 50.0% accuracy, PGD-40 and APGD 75.0%; the "
                               "white-box gradients are misleading")
    assert {k: (r["attack"], r["settings"]) for k, r in attacks.runs.items()} == {
        "fgsm": ("FGSM", {}), "pgd": ("PGD", pgd_settings()), "apgd-ce": ("APGD", {"steps": 100}),
        "apgd-dlr": ("APGD", {"steps": 100, "loss": "dlr"})}
    assert all(r["threat"] is THREAT and isinstance(r["model"], nn.Identity) for r in attacks.runs.values())
    assert all(torch.equal(r["x"], x) and torch.equal(r["y"], y) for r in attacks.runs.values())


def test_accuracies_are_rounded_to_two_decimals(monkeypatch):
    x, y = logits_data(3)
    Attacks(monkeypatch, {"fgsm": {0}})
    assert check("one-step", x, y).numbers == {"fgsm_accuracy": 66.67, "white_box_accuracy": 100.0}


def test_one_step_passes_within_noise_and_tolerance(monkeypatch):
    x, y = logits_data(20)
    Attacks(monkeypatch, {**WHITE, "fgsm": set(range(9))})  # 4 more than the white-box attacks: noise
    finding = check("one-step", x, y)
    assert (finding.verdict, finding.numbers) == ("pass", {"fgsm_accuracy": 55.0, "white_box_accuracy": 75.0})
    assert finding.message == "the white-box attacks (75.0%) are at least as strong as FGSM (55.0%)"
    Attacks(monkeypatch, {**WHITE, "fgsm": set(range(10))})
    assert check("one-step", x, y, tolerance=25.0).verdict == "pass"  # 25 points: not more than the tolerance
    Attacks(monkeypatch, {**WHITE, "fgsm": set(range(10))})
    assert check("one-step", x, y, tolerance=24.9).verdict == "fail"


def test_one_step_default_tolerance_is_one_point(monkeypatch):
    x, y = logits_data(400)
    Attacks(monkeypatch, {"fgsm": set(range(5))})  # 1.25 points, 5 > 2 sqrt(5)
    assert check("one-step", x, y).verdict == "fail"


def test_misclassified_samples_are_never_robust_and_two_classes_skip_dlr(monkeypatch):
    x, y = logits_data(20, k=2, wrong=(10, 11, 12, 13, 14))
    attacks = Attacks(monkeypatch, {"pgd": {0}, "fgsm": set(range(15))})
    finding = check("one-step", x, y)
    assert finding.numbers == {"fgsm_accuracy": 25.0, "white_box_accuracy": 70.0}
    assert "apgd-dlr" not in attacks.runs and finding.verdict == "fail"


def test_black_box_takes_the_stronger_of_square_and_transfer(monkeypatch):
    x, y = logits_data(20, wrong=(19,))
    transfer = x.clone()
    transfer[:12] = transfer[:12].roll(1, dims=1)  # misclassified by the model
    transfer[19] = F.one_hot(y[19], 3).float()  # the misclassified sample's point is right: still not robust
    surrogate = nn.Identity()
    attacks = Attacks(monkeypatch, {"square": set(range(6))}, points={"transfer": transfer})
    finding = check("black-box", x, y, surrogate=surrogate)
    assert finding.numbers == {"square_accuracy": 65.0, "transfer_accuracy": 35.0, "white_box_accuracy": 95.0}
    assert finding.verdict == "fail" and finding.message.startswith("black-box beats white-box: transfer leaves 35.0%")
    assert attacks.runs["square"]["attack"] == "square" and attacks.runs["square"]["settings"] == {"queries": 1000}
    assert attacks.runs["transfer"]["model"] is surrogate and attacks.runs["transfer"]["settings"] == pgd_settings()
    assert attacks.runs["transfer"]["threat"] is THREAT


def test_black_box_square_alone_and_skipped_without_any(monkeypatch):
    x, y = logits_data(20)
    attacks = Attacks(monkeypatch, {"square": {0, 1, 2}})
    finding = check("black-box", x, y)
    assert finding.verdict == "pass" and "transfer" not in attacks.runs
    assert finding.numbers == {"square_accuracy": 85.0, "white_box_accuracy": 100.0}
    assert finding.message == "the white-box attacks (100.0%) are at least as strong as square (85.0%)"
    Attacks(monkeypatch)
    monkeypatch.setattr(diagnostics, "ATTACKS", {})
    finding = check("black-box", x, y)
    assert (finding.verdict, finding.numbers) == ("skip", {})
    assert finding.message == "no black-box attack available (register 'square' or give a surrogate)"


@pytest.mark.parametrize("steps,broken,verdict", [(40, 99, "pass"), (120, 98, "fail")])
def test_unbounded_needs_99_percent_of_the_correct_samples(monkeypatch, steps, broken, verdict):
    threat = Linf(eps=EPS, bounds=(-1.0, 1.0))
    x, y = logits_data(101, wrong=(100,))  # the misclassified sample is not counted
    attacks = Attacks(monkeypatch, {"unbounded": set(range(broken))})
    finding = check("unbounded", x, y, threat=threat, steps=steps)
    assert finding.verdict == verdict and finding.numbers["eps"] == 2.0
    assert finding.numbers["success_rate"] == pytest.approx(float(broken))
    run = attacks.runs["unbounded"]
    assert run["settings"] == {"steps": max(steps, 100), "step_size": 0.1}
    assert isinstance(run["threat"], Linf) and (run["threat"].eps, run["threat"].bounds) == (2.0, (-1.0, 1.0))
    if verdict == "pass":
        assert finding.message == "an unbounded attack breaks 99.0% of correctly classified samples"
    else:
        assert finding.message == ("PGD with eps covering the whole box breaks only 98.0% of the correctly classified "
                                   "samples; any image can be reached, so gradients are not guiding the attack")


def test_unbounded_with_an_l2_claim_is_still_linf_over_the_box_and_skips_without_correct_samples(monkeypatch):
    x, y = logits_data(4, wrong=(0, 1, 2, 3))
    Attacks(monkeypatch)
    finding = check("unbounded", x, y, threat=L2(eps=0.5))
    assert finding.verdict == "skip" and finding.message == "no correctly classified sample"
    assert math.isnan(finding.numbers["success_rate"]) and finding.numbers["eps"] == 1.0


def random_sampling_data(dtype=torch.float32):
    x = torch.tensor([[0.8, 0.2, 0.2],  # 0: out of reach (margin 0.6 > 2 eps)
                      [0.5, 0.302, 0.2],  # 1: only a vertex of the L-inf ball reaches it (d1 - d0 = 0.2 > 0.198)
                      [0.5, 0.45, 0.2],  # 2: reachable, but the white-box attacks broke it
                      [0.2, 0.8, 0.2],  # 3: out of reach
                      [0.46, 0.5, 0.2],  # 4: misclassified
                      [0.2, 0.2, 0.8]], dtype=dtype)  # 5: out of reach
    return x, torch.tensor([0, 0, 0, 1, 0, 2])


def test_random_sampling_draws_vertices_of_the_linf_ball(monkeypatch):
    x, y = random_sampling_data()
    Attacks(monkeypatch, {"pgd": {2}})
    finding = check("random-sampling", x, y)
    assert finding.verdict == "fail"
    assert finding.numbers == {"white_box_survivors": 4, "draws_per_sample": 200, "found": 1}
    assert finding.message == ("random points in the eps-ball break 1 of the 4 samples the white-box attacks could "
                               "not: the gradients point the wrong way")
    Attacks(monkeypatch, {"pgd": {2}})
    assert check("random-sampling", x, y, random_samples=30).numbers["found"] == 1  # 15 vertices suffice here


def test_random_sampling_stays_in_the_ball(monkeypatch):
    x, y = random_sampling_data()
    Attacks(monkeypatch, {"pgd": {1, 2}})
    finding = check("random-sampling", x, y, random_samples=500)
    assert finding.verdict == "pass" and finding.numbers == {"white_box_survivors": 3, "draws_per_sample": 500,
                                                             "found": 0}
    assert finding.message == "random sampling found nothing the white-box attacks missed (3 samples)"
    Attacks(monkeypatch, {"pgd": {1}})  # sample 2 lies within reach of uniform draws in the L2 ball
    finding = check("random-sampling", x, y, threat=L2(eps=0.1))
    assert finding.verdict == "fail" and finding.numbers["found"] == 1
    Attacks(monkeypatch, {"pgd": {2}})  # sample 1 does not: no vertices in L2 (its reach is 0.1 sqrt 2)
    finding = check("random-sampling", x, y, threat=L2(eps=0.1))
    assert finding.verdict == "pass" and finding.message.endswith("(4 samples)")


class Recorder(nn.Module):
    """The identity, keeping every batch it is given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x


@pytest.mark.parametrize("n,draws,chunks", [(2049, 4, [1, 1, 1, 1]), (1000, 10, [4, 4, 2]), (3, 6, [6])])
def test_random_sampling_makes_every_other_draw_of_each_sample_a_vertex(monkeypatch, n, draws, chunks):
    """Before the fix, the rows of a chunk were numbered, not each sample's draws: with one draw per
    chunk (more than 2048 survivors) the even samples never got a vertex."""
    x, y = torch.full((n, 3), 0.5), torch.zeros(n, dtype=torch.int64)  # logits tied: class 0, every sample survives
    Attacks(monkeypatch)
    model = Recorder()
    finding = check("random-sampling", x, y, model=model, random_samples=draws)
    assert finding.numbers["white_box_survivors"] == n
    batches = model.seen[1:]  # after the clean pass
    assert [b.shape[0] for b in batches] == [n * c for c in chunks]
    vertices = torch.zeros(n, dtype=torch.int64)
    positive = total = 0
    for batch, c in zip(batches, chunks):
        delta = (batch.view(n, c, 3) - 0.5)
        assert bool((delta.abs() <= EPS + 1e-6).all())
        vertex = (delta.abs() - EPS).abs().lt(1e-6).all(-1)
        vertices += vertex.sum(1)
        positive, total = positive + int((delta[vertex] > 0).sum()), total + int(vertex.sum()) * 3
    assert vertices.tolist() == [draws // 2] * n
    if n > 3:
        assert 0.45 < positive / total < 0.55  # each vertex coordinate is +eps or -eps with probability 1/2


class WrongOnFirstDraws(nn.Module):
    """The identity, except that the first batch of random draws (the second call) is misclassified."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.roll(1, dims=1) if self.calls == 2 else x


def test_random_sampling_keeps_what_an_earlier_chunk_found(monkeypatch):
    x, y = logits_data(1000, k=1 + 2)  # out of reach of eps 0.1: only the model's lapse breaks them
    Attacks(monkeypatch)
    finding = check("random-sampling", x, y, model=WrongOnFirstDraws(), random_samples=10)  # chunks 4, 4, 2
    assert finding.verdict == "fail" and finding.numbers["found"] == 1000


def test_random_sampling_draws_depend_on_the_seed_only(monkeypatch):
    x, y = random_sampling_data()
    seen = []
    for global_seed, seed in [(1, 3), (2, 3), (1, 4)]:
        Attacks(monkeypatch, seed=seed)
        model = Recorder()
        with torch.random.fork_rng():
            torch.manual_seed(global_seed)
            check("random-sampling", x, y, model=model, random_samples=6, seed=seed)
        seen.append(torch.cat(model.seen[1:]))
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])


def test_random_sampling_skips_when_nothing_survives(monkeypatch):
    x, y = logits_data(3)
    Attacks(monkeypatch, {"pgd": {0, 1, 2}})
    finding = check("random-sampling", x, y, random_samples=7)
    assert (finding.verdict, finding.numbers) == ("skip", {"white_box_survivors": 0, "draws_per_sample": 7})
    assert finding.message == "the white-box attacks broke every sample; nothing to sample around"


def eps_keys(grid):
    return ["pgd" if e == grid[1] else f"pgd@{e:.6g}" for e in grid]


@pytest.mark.parametrize("broken,verdict,message", [
    ((10, 14, 18, 20), "pass", "accuracy falls with eps (50.0 → 30.0 → 10.0 → 0.0%)"),
    ((4, 8, 12, 18), "pass", "accuracy falls with eps (80.0 → 60.0 → 40.0 → 10.0%)"),
    ((4, 8, 12, 17), "warn", "at eps 1 (4x the claim) accuracy is still 15.0%: check that the attack is not stuck"),
    ((8, 5, 12, 20), "pass", "accuracy falls with eps (60.0 → 75.0 → 40.0 → 0.0%)"),  # a rise within noise
    ((15, 5, 18, 20), "fail", "accuracy rises with eps (25.0 → 75.0 → 10.0 → 0.0%): larger perturbations should "
                              "never help the model"),
    ((4, 8, 18, 13), "fail", "accuracy rises with eps (80.0 → 60.0 → 10.0 → 35.0%): larger perturbations should "
                             "never help the model"),
])
def test_eps_monotone_on_a_linf_grid_capped_at_the_box(monkeypatch, broken, verdict, message):
    threat = Linf(eps=0.3)
    grid = [0.15, 0.3, 0.6, 1.0]  # 0.5, 1, 2, 4 times eps; 1.2 capped at the box's width
    x, y = logits_data(20)
    attacks = Attacks(monkeypatch, {k: set(range(b)) for k, b in zip(eps_keys(grid), broken)})
    finding = check("eps-monotone", x, y, threat=threat)
    assert (finding.verdict, finding.message) == (verdict, message)
    assert finding.numbers == {"eps": grid, "accuracy": [100 - 5 * b for b in broken]}
    for key, e in zip(eps_keys(grid), grid):
        run = attacks.runs[key]
        assert run["settings"] == {"steps": 40, "step_size": 2.5 * e / 40, "loss": "ce"}
        assert type(run["threat"]) is Linf and (run["threat"].eps, run["threat"].bounds) == (e, (0.0, 1.0))


def test_eps_monotone_caps_at_the_width_of_its_own_box_and_warns_above_ten_percent(monkeypatch):
    threat = Linf(eps=0.2, bounds=(0.5, 1.0))
    grid = [0.1, 0.2, 0.4, 0.5]  # 0.8 capped at the width 0.5
    x, y = logits_data(200)
    attacks = Attacks(monkeypatch, {k: set(range(b)) for k, b in zip(eps_keys(grid), (40, 80, 120, 179))})
    finding = check("eps-monotone", x, y, threat=threat)
    assert finding.numbers == {"eps": grid, "accuracy": [80.0, 60.0, 40.0, 10.5]}
    assert finding.verdict == "warn" and finding.message.startswith("at eps 0.5 (4x the claim) accuracy is still 10.5%")
    assert all(attacks.runs[k]["threat"].bounds == (0.5, 1.0) for k in eps_keys(grid))


def test_eps_monotone_l2_grid_is_not_capped(monkeypatch):
    threat = L2(eps=0.5, bounds=(0.0, 1.0))
    grid = [0.25, 0.5, 1.0, 2.0]
    x, y = logits_data(20)
    attacks = Attacks(monkeypatch, {k: set(range(b)) for k, b in zip(eps_keys(grid), (2, 4, 8, 20))})
    finding = check("eps-monotone", x, y, threat=threat)
    assert finding.verdict == "pass" and finding.numbers["eps"] == grid
    assert all(type(attacks.runs[k]["threat"]) is L2 for k in eps_keys(grid))
    assert finding.message == "accuracy falls with eps (90.0 → 80.0 → 60.0 → 0.0%)"


# --- the attack's own behaviour ---------------------------------------------------------------------


@pytest.mark.parametrize("rose,verdict", [(19, "pass"), (18, "pass"), (17, "fail")])
def test_loss_rises_counts_the_correct_samples_whose_loss_rose(monkeypatch, rose, verdict):
    x, y = logits_data(22, wrong=(20, 21))
    attacked = x.clone()
    attacked[:rose] = attacked[:rose].roll(1, dims=1)  # the loss rises on these; the others stay
    attacked[rose:20, 0] += 5e-7  # a change below the 1e-6 that counts as a rise (for class-0 samples: a fall)
    attacks = Attacks(monkeypatch, points={"pgd": attacked})
    finding = check("loss-rises", x, y)
    assert finding.verdict == verdict and attacks.runs["pgd"]["settings"] == pgd_settings()
    clean, adv = F.cross_entropy(x, y, reduction="none"), F.cross_entropy(attacked, y, reduction="none")
    assert finding.numbers == pytest.approx({"fraction_rose": rose / 20, "clean_loss": float(clean.mean()),
                                             "attacked_loss": float(adv.mean())})
    # 18 of 20 is 90%, which passes: before the fix a float32 mean made it 0.89999998 and failed
    assert finding.message == (f"PGD raised the loss on {5 * rose}% of samples" if verdict == "pass" else
                               "PGD raised the loss on only 85% of samples: the attack is not climbing the loss "
                               "(check gradients and step size)")


def test_loss_rises_needs_a_rise_above_its_tolerance_and_a_correct_sample(monkeypatch):
    x, y = logits_data(20, k=2, dtype=torch.float64)
    attacked = x.clone()
    attacked[y == 1, 0] += 5e-7  # class 1: its loss rises by less than 1e-6
    Attacks(monkeypatch, points={"pgd": attacked})
    assert check("loss-rises", x, y).numbers["fraction_rose"] == 0.0
    x = torch.tensor([[3.0, 0.0], [0.5, 0.0], [0.2, 0.0], [0.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1])
    attacked = x.clone()
    attacked[2, 0] = 0.1  # only the least confident sample's loss rises; the others stay (each against its own)
    Attacks(monkeypatch, points={"pgd": attacked})
    assert check("loss-rises", x, y).numbers["fraction_rose"] == 0.25
    x, y = logits_data(3, wrong=(0, 1, 2))
    Attacks(monkeypatch)
    finding = check("loss-rises", x, y)
    assert finding.verdict == "skip" and finding.message == "no correctly classified sample"
    assert math.isnan(finding.numbers["fraction_rose"])


@pytest.mark.parametrize("ce,margin,n,verdict", [
    (10, 4, 20, "warn"), (4, 10, 20, "warn"), (4, 8, 20, "pass"),
    (9, 0, 400, "warn"),  # 2.25 points
    (0, 9, 400, "warn"),
    (8, 0, 400, "pass"),  # 2 points: not more than 2
])
def test_loss_agreement_warns_beyond_two_points_either_way(monkeypatch, ce, margin, n, verdict):
    x, y = logits_data(n)
    attacks = Attacks(monkeypatch, {"pgd": set(range(ce)), "pgd-margin": set(range(margin))})
    finding = check("loss-agreement", x, y)
    acc_ce, acc_margin = 100 - 100 * ce / n, 100 - 100 * margin / n
    assert finding.verdict == verdict
    assert finding.numbers == {"ce_accuracy": acc_ce, "margin_accuracy": acc_margin}
    assert attacks.runs["pgd-margin"]["settings"] == pgd_settings(loss="margin")
    if verdict == "warn":
        assert finding.message == (f"PGD with CE ({acc_ce:.1f}%) and with the margin loss ({acc_margin:.1f}%) disagree "
                                   "by more than 2 points: one loss is saturated; report the minimum")
    else:
        assert finding.message == f"CE ({acc_ce:.1f}%) and margin ({acc_margin:.1f}%) PGD agree"


@pytest.mark.parametrize("apgd,tolerance,verdict", [
    (21, 1.0, "fail"),  # 11 points more
    (20, 1.0, "warn"),  # 10: not more than 10
    (15, 1.0, "warn"),
    (15, 6.0, "pass"),  # 5 points: within the tolerance
    (14, 1.0, "pass"),  # 4 more: noise
])
def test_stronger_attack_fails_beyond_ten_points_and_warns_beyond_the_tolerance(monkeypatch, apgd, tolerance, verdict):
    x, y = logits_data(100)
    Attacks(monkeypatch, {"pgd": set(range(10)), "apgd-ce": set(range(apgd))})
    finding = check("stronger-attack", x, y, tolerance=tolerance)
    assert finding.verdict == verdict
    assert finding.numbers == {"pgd_accuracy": 90.0, "apgd_accuracy": 100.0 - apgd}
    expected = {
        "fail": f"APGD (CE and DLR) leaves {100 - apgd:.1f}% accuracy, PGD-40 90.0%: a PGD evaluation overstates "
                "robustness by more than 10 points; evaluate with the standard suite",
        "warn": f"APGD (CE and DLR) leaves {100 - apgd:.1f}% accuracy, PGD-40 90.0%: PGD alone overstates robustness; "
                "report the standard suite",
        "pass": f"PGD-40 (90.0%) is as strong as APGD ({100 - apgd:.1f}%)",
    }
    assert finding.message == expected[verdict]


@pytest.mark.parametrize("long,verdict", [(8, "warn"), (6, "pass")])
def test_more_steps_warns_when_five_times_the_steps_break_more(monkeypatch, long, verdict):
    x, y = logits_data(20)
    attacks = Attacks(monkeypatch, {"pgd": {0, 1}, "pgd-long": set(range(long))})
    finding = check("more-steps", x, y, steps=30)
    acc = 100 - 5 * long
    assert finding.verdict == verdict
    assert finding.numbers == {"steps": 30, "accuracy": 90.0, "long_steps": 150, "long_accuracy": acc}
    # the step size of 30 steps: more steps explore further, they do not take smaller steps
    assert attacks.runs["pgd-long"]["settings"] == {"steps": 150, "step_size": 2.5 * EPS / 30, "loss": "ce"}
    assert attacks.runs["pgd"]["settings"] == {"steps": 30, "step_size": 2.5 * EPS / 30, "loss": "ce"}
    assert finding.message == (f"150 PGD steps lower accuracy from 90.0% to {acc:.1f}%: the attack had not converged; "
                               "use more steps or APGD" if verdict == "warn" else f"150 steps give {acc:.1f}% vs 90.0%")


def test_the_runs_are_shared_between_checks_and_seeded_per_purpose(monkeypatch):
    x, y = logits_data(20)
    attacks = Attacks(monkeypatch, seed=5)
    diagnosis = diagnose(nn.Identity(), x, y, threat=THREAT, seed=5,
                         checks=("one-step", "loss-rises", "loss-agreement", "stronger-attack", "more-steps"))
    assert [f.check for f in diagnosis.findings] == ["one-step", "loss-rises", "loss-agreement", "stronger-attack",
                                                     "more-steps"]
    assert sorted(attacks.runs) == sorted(["fgsm", "pgd", "apgd-ce", "apgd-dlr", "pgd-margin", "pgd-long"])


# --- gradient health --------------------------------------------------------------------------------


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factors):
        ctx.factors = factors
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factors.to(grad.dtype), None


class BackwardScale(nn.Module):
    """The identity, its backward multiplied by ``factors`` (``[N, 1]`` per sample or ``[N, D]``)."""

    def __init__(self, factors):
        super().__init__()
        self.factors = factors

    def forward(self, x):
        return _Scale.apply(x, self.factors)


def per_sample(values):
    return torch.tensor(values, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("zeros,n,verdict", [(0, 32, "pass"), (1, 32, "pass"), (2, 32, "warn"), (16, 32, "warn"),
                                            (17, 32, "fail"), (1, 20, "pass"), (2, 20, "warn")])
def test_zero_gradients_thresholds(zeros, n, verdict):
    """More than 5% zero: warn; more than half: fail. 1 of 20 is 5%, which passes (before the fix a float32
    mean made it 0.0500000007 and warned)."""
    x, y = logits_data(n)
    factors = per_sample([0.0] * zeros + [1.0] * (n - zeros))
    finding = check("zero-gradients", x, y, model=BackwardScale(factors))
    zero = zeros / n
    assert (finding.verdict, finding.numbers) == (verdict, {"nan_fraction": 0.0, "zero_fraction": zero})
    assert finding.message == {
        "pass": f"{100 * zero:.1f}% zero, 0.0% non-finite input gradients",
        "warn": f"{100 * zero:.1f}% of input gradients are exactly zero",
        "fail": f"{100 * zero:.1f}% of input gradients are exactly zero: gradient attacks cannot move (shattered or "
                "saturated gradients)",
    }[verdict]


def test_zero_gradients_count_whole_samples_and_any_non_finite_coordinate():
    x, y = logits_data(32)
    factors = torch.ones(32, 3)
    factors[:, 0] = 0.0  # one coordinate zero everywhere: no sample's gradient is zero
    assert check("zero-gradients", x, y, model=BackwardScale(factors)).numbers["zero_fraction"] == 0.0
    factors[:20] = 0.0
    factors[0, 1], factors[1, 2] = math.nan, math.inf  # one non-finite coordinate is enough; it comes first
    finding = check("zero-gradients", x, y, model=BackwardScale(factors))
    assert finding.verdict == "fail" and finding.numbers == {"nan_fraction": 2 / 32, "zero_fraction": 18 / 32}
    assert finding.message == "6.2% of input gradients contain NaN or inf"


class Ramp(nn.Module):
    """Logits ``[0, 3 x]`` of a one-feature input: the cross-entropy of class 0 is ``softplus(3 x)``."""

    calls = 0

    def forward(self, x):
        Ramp.calls += 1
        return torch.cat([torch.zeros_like(x), 3 * x], dim=1)


@pytest.mark.parametrize("signs,verdict,cosine", [
    ([1] * 4, "pass", 1.0), ([1] * 21 + [-1], "pass", 20 / 22), ([1] * 10 + [-1], "warn", 9 / 11),
    ([1] * 7 + [-1] * 2, "warn", 5 / 9), ([1] * 5 + [-1] * 2, "fail", 3 / 7), ([1, -1, -1], "fail", -1 / 3),
])
def test_non_differentiable_compares_autograd_with_central_differences(signs, verdict, cosine):
    """One feature: every random direction is +-1, so each sample's directional derivatives are
    +-softplus'(3 x) by finite differences and, through a backward scaled by +-1, +-the same by
    autograd: the cosine is the mean sign."""
    n = len(signs)
    x, y = torch.full((n, 1), 0.25, dtype=torch.float64), torch.zeros(n, dtype=torch.int64)
    threat = Linf(eps=EPS, bounds=(-1.0, 1.0))
    Ramp.calls = 0
    finding = check("non-differentiable", x, y, threat=threat,
                    model=nn.Sequential(BackwardScale(per_sample(signs)), Ramp()))
    derivative = 3 * torch.sigmoid(torch.tensor(0.75, dtype=torch.float64)).item()
    assert finding.verdict == verdict
    assert finding.numbers == pytest.approx({"cosine": cosine, "finite_difference_scale": derivative,
                                             "autograd_scale": derivative}, rel=1e-6)
    assert Ramp.calls == 1 + 2 + 1 + 2 * 4  # clean pass, the stochastic check, the gradient, 4 directions
    assert finding.message == {
        "pass": f"autograd matches finite differences (cosine {cosine:.2f})",
        "warn": f"autograd and finite differences only partly agree (cosine {cosine:.2f})",
        "fail": f"autograd and finite differences disagree (cosine {cosine:.2f}): a layer is non-differentiable or its "
                "backward is wrong; attack it with BPDA",
    }[verdict]


def test_the_stochastic_check_runs_its_two_passes_once():
    x, y = torch.full((4, 1), 0.25, dtype=torch.float64), torch.zeros(4, dtype=torch.int64)
    Ramp.calls = 0
    diagnosis = diagnose(Ramp(), x, y, threat=THREAT, checks=("stochastic", "non-differentiable"))
    assert Ramp.calls == 1 + 2 + 1 + 2 * 4 and diagnosis.verdict == "pass"  # the finding is reused, not measured again


def test_non_differentiable_at_the_box_edge_clamps_the_finite_difference():
    x, y = torch.ones(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.int64)  # at the top of the box
    finding = check("non-differentiable", x, y, threat=Linf(eps=EPS, bounds=(-1.0, 1.0)), model=Ramp())
    derivative = 3 * torch.sigmoid(torch.tensor(3.0, dtype=torch.float64)).item()
    # the point up the slope is clamped back to x: one of the two sides of the difference is lost
    assert finding.numbers["finite_difference_scale"] == pytest.approx(derivative / 2, rel=1e-3)
    assert finding.numbers["autograd_scale"] == pytest.approx(derivative, rel=1e-9)


def test_non_differentiable_at_the_bottom_of_the_box_clamps_too():
    x, y = -torch.ones(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.int64)
    finding = check("non-differentiable", x, y, threat=Linf(eps=EPS, bounds=(-1.0, 1.0)), model=Ramp())
    derivative = 3 * torch.sigmoid(torch.tensor(-3.0, dtype=torch.float64)).item()
    # one-sided: half the derivative, up to the curvature's s f''/4 (0.3% here); unclamped it would be all of it
    assert finding.numbers["finite_difference_scale"] == pytest.approx(derivative / 2, rel=1e-2)


def test_finite_differences_step_a_thousandth_of_the_box_along_seeded_unit_directions():
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 100 + 50
    y = torch.tensor([0, 1, 2])
    threat = Linf(eps=8.0, bounds=(0.0, 255.0))  # the step is 1e-3 x 255
    seen = []
    for global_seed, seed in [(1, 3), (2, 3), (1, 4)]:
        model = Recorder()
        with torch.random.fork_rng():
            torch.manual_seed(global_seed)
            finding = check("non-differentiable", x, y, threat=threat, model=model, seed=seed)
        assert finding.verdict == "pass" and finding.numbers["cosine"] > 0.99  # <gradient, d> against the differences
        points = torch.stack(model.seen[4:])  # after the clean pass, the two of the stochastic check, the gradient
        assert points.shape == (8, 3, 5)  # 4 directions, up and down
        up, down = points[0::2] - x, points[1::2] - x
        assert torch.allclose(up, -down) and torch.allclose(up.norm(dim=2), torch.full((4, 3), 0.255, dtype=torch.float64))
        seen.append(points)
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])  # the seed's draws, not the global RNG


class SmallRamp(nn.Module):
    """Logits ``[0, 1e-10 x]``: directional derivatives near 5e-11, so each vector of 16 has a norm near 2e-10,
    between the cosine's eps (1e-12) and torch's default (1e-8)."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 1e-10 * x], dim=1)


def test_the_cosine_of_small_derivatives_is_not_damped():
    x, y = torch.full((4, 1), 0.25, dtype=torch.float64), torch.zeros(4, dtype=torch.int64)
    finding = check("non-differentiable", x, y, model=SmallRamp())
    assert finding.verdict == "pass" and finding.numbers["cosine"] == pytest.approx(1.0, abs=1e-2)


class Flat(nn.Module):
    def forward(self, x):
        return torch.cat([x * 0, x * 0], dim=1)


def test_non_differentiable_passes_a_flat_loss_and_skips_a_randomized_model():
    x, y = torch.full((3, 1), 0.5), torch.zeros(3, dtype=torch.int64)
    finding = check("non-differentiable", x, y, model=Flat())
    assert finding.verdict == "pass" and finding.message == "the loss is locally flat (finite differences are zero)"
    assert finding.numbers == {"cosine": 0.0, "finite_difference_scale": 0.0, "autograd_scale": 0.0}
    finding = check("non-differentiable", x, y, model=Alternating(1.0))
    assert finding.verdict == "skip" and finding.numbers == {}
    assert finding.message == ("the model is randomized, so finite differences are noise (see the 'stochastic' "
                               "finding)")


class Alternating(nn.Module):
    """Adds ``delta`` to logit 0 at every other call: two passes differ by exactly ``delta``."""

    def __init__(self, delta):
        super().__init__()
        self.delta, self.calls = delta, 0

    def forward(self, x):
        self.calls += 1
        out = torch.cat([x, x], dim=1) if x.shape[1] == 1 else x.clone()
        out[:, 0] = out[:, 0] + self.delta * (self.calls % 2)
        return out


@pytest.mark.parametrize("delta,verdict", [(0.0, "pass"), (0.95e-4, "pass"), (1.05e-4, "warn")])
def test_stochastic_threshold_is_relative_to_the_largest_logit(delta, verdict):
    x = torch.tensor([[9.0, 0.0, -2.0], [1.0, 3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    finding = check("stochastic", x, y, model=Alternating(delta))  # threshold 1e-5 (1 + 9) = 1e-4
    assert finding.verdict == verdict
    assert finding.numbers == {"max_logit_difference": pytest.approx(delta, abs=1e-12)}
    assert finding.message == ("the model is deterministic" if verdict == "pass" else
                               f"two forward passes on the same inputs differ (max |Δlogit| {delta:.3g}): the model "
                               "is randomized; attack it with EOT")


def test_probabilities_fail_and_logits_pass():
    x, y = logits_data(4)
    finding = check("probabilities", x, y, model=nn.Softmax(dim=1))
    assert finding.verdict == "fail" and finding.numbers == {}
    assert finding.message == ("the outputs are probabilities (rows sum to 1): attacks need logits; remove the final "
                               "softmax")
    finding = check("probabilities", x, y)
    assert (finding.verdict, finding.message) == ("pass", "the outputs are logits")


# --- the report and the inputs ------------------------------------------------------------------


def test_the_diagnosis_is_the_worst_finding_and_its_documents():
    def diagnosis(*verdicts):
        return Diagnosis([Finding(c, v, f"m{i}") for i, (c, v) in enumerate(zip(CHECKS, verdicts))], THREAT)

    assert diagnosis().verdict == "pass" and diagnosis("pass", "skip").verdict == "pass"
    assert diagnosis("skip", "warn", "pass").verdict == "warn" and diagnosis("warn", "fail", "pass").verdict == "fail"
    assert diagnosis("fail", "skip").verdict == "fail"
    d = Diagnosis([Finding("one-step", "warn", "a", {"x": 1}), Finding("unbounded", "pass", "b")], THREAT)
    assert d["unbounded"].message == "b"
    with pytest.raises(KeyError) as missing:
        d["more-steps"]
    assert missing.value.args == ("more-steps",)
    assert d.findings[0].docs == "robustlab docs diagnostics#one-step"
    assert d.to_dict() == {
        "kind": "diagnostics", "version": d.to_dict()["version"], "threat": THREAT.to_dict(), "verdict": "warn",
        "findings": [{"check": "one-step", "verdict": "warn", "message": "a", "numbers": {"x": 1},
                      "docs": "robustlab docs diagnostics#one-step"},
                     {"check": "unbounded", "verdict": "pass", "message": "b", "numbers": {},
                      "docs": "robustlab docs diagnostics#unbounded"}]}
    assert d.markdown() == ("## Gradient-masking diagnostics: **warn**\n\n| check | verdict | finding |\n|---|---|---|\n"
                            "| one-step (`robustlab docs diagnostics#one-step`) | warn | a |\n"
                            "| unbounded (`robustlab docs diagnostics#unbounded`) | pass | b |\n")


@pytest.mark.parametrize("kwargs,message", [
    ({"threat": L1(eps=1.0)}, "diagnose needs a bounded Linf or L2 threat model, got "),
    ({"threat": Linf(eps=math.inf)}, "diagnose needs a bounded Linf or L2 threat model, got "),
    ({"threat": L2(eps=math.inf)}, "diagnose needs a bounded Linf or L2 threat model, got "),
    ({"steps": 19}, "the checks compare against PGD with at least 20 steps; got steps=19"),
    ({"checks": ("zz", "one-step", "aa")}, "unknown checks ['aa', 'zz']; choose from " + str(list(CHECKS))),
])
def test_bad_settings_are_refused_with_their_reason(kwargs, message):
    x, y = logits_data(2)
    with pytest.raises(RobustlabError) as error:
        diagnose(nn.Identity(), x, y, **{"threat": THREAT, **kwargs})
    assert str(error.value).startswith(message)
    if "threat" in kwargs:
        assert str(error.value) == message + str(kwargs["threat"])
    else:
        assert str(error.value) == message


def test_an_empty_batch_is_refused_and_20_steps_accepted():
    with pytest.raises(RobustlabError, match="^diagnose needs at least one sample$"):
        diagnose(nn.Identity(), torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), threat=THREAT,
                 checks=("probabilities",))
    x, y = logits_data(2)
    assert diagnose(nn.Identity(), x, y, threat=THREAT, steps=20, checks=()).findings == []


class ModeSpy(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def test_checks_run_in_eval_mode_in_their_own_order():
    x, y = logits_data(4)
    spy = ModeSpy().train()
    diagnosis = diagnose(spy, x.requires_grad_(), y, threat=L2(eps=0.5),
                         checks=("zero-gradients", "stochastic", "probabilities"))
    assert [f.check for f in diagnosis.findings] == ["probabilities", "stochastic", "zero-gradients"]
    assert spy.seen and not any(spy.seen) and spy.training
    assert diagnosis.threat == L2(eps=0.5) and diagnosis.verdict == "pass"
