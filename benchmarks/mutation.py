"""Mutation testing outside CI (issue 15): how many small wrong changes does the suite catch?

    python benchmarks/mutation.py                      # every module below, in order
    python benchmarks/mutation.py losses threat        # some of them
    python benchmarks/mutation.py --issue15            # only the six mutations of issue 15
    python benchmarks/mutation.py apgd --functions _AutoPGDBase._descend AutoPGD._run   # some functions

mutmut 3 (3.8.1, installed with the peers: ``benchmarks/requirements-peers.txt``) mutates one module at a time in a scratch copy
(``benchmarks/.cache/mutation/<module>/``) and runs, for each mutant, only the tests of that
module's selection that reach the mutated function. A mutant is *killed* when a test fails (or
times out), *survives* when all pass, and has *no tests* when none of the selection reaches it
(counted as not killed). Results go to ``benchmarks/results/mutation.json`` (score per module,
every survivor with its diff) and ``mutation.md``; a run of some modules keeps the others'
entries. ``--functions`` restricts one module's run to the mutants of the named functions
(``name`` or ``Class.method``); its result is recorded beside the module's whole-file entry, under
``<module>:<functions>``. ``--issue15`` applies the six mutations the issue lists (and variants of where they
could be made) and records which tests fail on each in ``mutation_issue15.json`` / ``.md``.

Slow (minutes per module on 2 shared cores), hence outside CI and the test suite.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / ".cache" / "mutation"

_MIN_NORM_TESTS = ["tests/test_golden_references.py", "tests/test_definitions.py", "tests/test_minimum_norm.py",
                   "tests/test_attacks.py", "-k",
                   "(fmn or ddn) and not (digits or break or smaller_perturbations or reach_the_target"
                   " or quantizes or l1_threat or failed_samples or non_robust or much_stronger or behavioral_bar)"]

# module -> (file, the tests that pin it)
MODULES: dict[str, tuple[str, list[str]]] = {
    "losses": ("src/robustlab/losses.py", ["tests/test_definitions.py", "tests/test_golden_references.py"]),
    "threat": ("src/robustlab/threat.py", ["tests/test_threat.py", "tests/test_definitions.py"]),
    # No test whose fixture trains a model (test_evaluation.py's digits_model): mutmut sets each mutant's CPU
    # limit from the tests' call times without fixture setup, so such a fixture times every mutant out, and a
    # timeout counts as killed. The evaluation's hand-made tables in test_definitions.py need no training.
    "metrics": ("src/robustlab/evaluation/metrics.py",
                ["tests/test_definitions.py", "tests/test_evaluation.py::test_wilson_interval_known_values"]),
    # The APGD tests that need no trained model (the digits MLP trains for seconds in every mutant's run):
    # the golden trajectories, the published checkpoint schedule, the step rule, the kept point, the
    # linear oracles and the hyperparameter checks.
    "apgd": ("src/robustlab/attacks/apgd.py",
             ["tests/test_golden_references.py", "tests/test_definitions.py", "tests/test_apgd.py", "-k",
              "test_apgd and not (scheduled_iterations or at_least_as_strong or non_robust_model or masked"
              " or reaches_the_target or never_lose or costs_less or cost_counters or uses_both_other_classes"
              " or too_few_classes or given_targets_is_targeted or same_generator or trained_model"
              " or (unbounded_threat_is_rejected and not reason))"]),
    # test_attacks.py whole is ~770 tests, some of them minutes long on this machine: only the ones about
    # the gradient attacks (the conformance cases of pgd/bim/fgsm included), not the 100-step digits ones.
    "gradient": ("src/robustlab/attacks/gradient.py",
                 ["tests/test_golden_references.py", "tests/test_attacks.py", "-k",
                  "(pgd or bim or fgsm or restart or kappa or linear_model or hyperparameters) and not much_stronger"]),
    # Model-free Square tests only (test_black_box.py's digits MLP trains in every mutant's run): the published
    # schedule and window sides, the golden schedule of the reference, the L2 budget, give_up/keep_near on
    # constant models, and test_square.py's replays of the algorithm on hand-built models.
    "square": ("src/robustlab/attacks/square.py",
               ["tests/test_square.py", "tests/test_definitions.py", "tests/test_golden_references.py",
                "tests/test_black_box.py", "-k",
                "square and not (breaks_most or targeted_reaches or leaves_already or starts_from_vertical"
                " or needs_a_bounded or continues_from or keeps_an_adversarial or start_must_lie)"]),
    # Model-free for the same reason as metrics: the evaluation's crediting, costs, naming and JSON round trip on
    # the hand-made table of test_definitions.py.
    "evaluate": ("src/robustlab/evaluation/evaluate.py", ["tests/test_definitions.py"]),
    # The template's own model-free tests, and test_attacks.py without the digits MLP and with its conformance
    # suite cut to three attacks (pgd-Linf, fgsm-L2, square-Linf: the template runs the same code for every
    # attack; all 39 attack-norm pairs take ~50 s per mutant on this machine).
    "base": ("src/robustlab/attacks/base.py",
             ["tests/test_attack_template.py", "tests/test_attacks.py", "-k",
              "not (digits or non_robust or much_stronger or behavioral_bar or restarts_never_lose"
              " or at_least_as_strong_as_fgsm or targeted_pgd_reaches or pgd_loss_goes_up)"
              " and ((pgd-Linf and not apgd) or fgsm-L2 or square-Linf or not (apgd or bim- or boundary or cw-"
              " or ddn or deepfool or fab or fmn or gaussian-noise or hopskipjump or jsma or square- or pgd- or fgsm-))"]),
    # FAB / FAB-T and DeepFool without the digits MLP (it trains in every mutant's run): the replays of the
    # published algorithms on a fixed tanh network (test_fab_definitions.py, test_deepfool.py), the projections
    # against scipy, the linear models' closed forms, the golden files of the references (pyautoattack, Foolbox),
    # and test_attacks.py's conformance cases of these attacks.
    "fab": ("src/robustlab/attacks/fab.py",
            ["tests/test_fab_definitions.py", "tests/test_fab.py", "tests/test_golden_references.py",
             "tests/test_attacks.py", "-k", "fab and not (digit or l1_breaks or more_steps or reaches_the_target or only_the_samples"
             " or non_robust or much_stronger or behavioral_bar or restarts_never_lose or at_least_as_strong_as_fgsm)"]),
    "deepfool": ("src/robustlab/attacks/deepfool.py",
                 ["tests/test_deepfool.py", "tests/test_minimum_norm.py", "tests/test_golden_references.py",
                  "tests/test_attacks.py", "-k", "deepfool and not (digit or unbounded_l2 or smaller_perturbations or reach_the_target"
                  " or non_robust or much_stronger or behavioral_bar or restarts_never_lose or at_least_as_strong_as_fgsm)"]),
    # The minimum-norm attacks without the digits MLP (it trains in every mutant's run): the golden FMN replay
    # and DDN trajectory of the references, Algorithm 1's norm update, the linear-model oracles, the
    # conformance suite of test_attacks.py on its tiny untrained model, and the hyperparameter checks.
    "fmn": ("src/robustlab/attacks/fmn.py", ["tests/test_fmn_ddn_definitions.py", *_MIN_NORM_TESTS]),
    "ddn": ("src/robustlab/attacks/ddn.py", ["tests/test_fmn_ddn_definitions.py", *_MIN_NORM_TESTS]),
    # The objectives against their closed forms and signs (hypothesis and hand-made logits) and the golden C&W L2
    # trajectory of torchattacks (f6 with and without kappa); nothing trains.
    "cw_objectives": ("src/robustlab/attacks/cw_objectives.py",
                      ["tests/test_carlini_wagner.py", "tests/test_definitions.py", "tests/test_golden_references.py",
                       "tests/test_cw_definitions.py", "-k",
                       "objective or probability or f1_and or f6 or cw_l2_loss or cw_l2_matches or cw_defin"]),
    # C&W: the replays of the authors' L2 search (tanh in two boxes, clip, project; targeted, kappa, abort-early,
    # ten steps), the golden torchattacks trajectories and the binary-search hand tables; the linear-model
    # tests of test_carlini_wagner.py are left out (30 s, and the replays pin the same encodings). For L0/L∞:
    # the replays of l0_attack.py / li_attack.py and the pieces at their edges (test_cw_l0_linf_definitions.py),
    # test_carlini_wagner.py's model-free ones, and of test_attacks.py's conformance cases only the empty batch
    # (the 24 others cost ~15 s per mutant on the loaded machine: 4 mutants a minute).
    "carlini_wagner": ("src/robustlab/attacks/carlini_wagner.py",
                       ["tests/test_cw_definitions.py", "tests/test_golden_references.py", "tests/test_definitions.py",
                        "tests/test_carlini_wagner.py", "tests/test_cw_l0_linf_definitions.py",
                        "tests/test_attacks.py", "-k",
                        "cw_defin or cw_l2_matches or cw_binary or cw_l2_loss or binary_search_follows"
                        " or cw_l0_linf_defin or cw_l0_counts or bad_hyperparameters or single_class"
                        " or (empty_batch and cw-)"]),
    # JSMA without the digits MLP (it trains in every mutant's run): the replays of Papernot et al.'s pairwise
    # search (tests/test_jsma_definitions.py), the pruned pair search against the exhaustive one, the hyperparameter
    # checks and test_attacks.py's conformance cases on its tiny untrained model.
    "jsma": ("src/robustlab/attacks/jsma.py",
             ["tests/test_jsma_definitions.py", "tests/test_minimum_norm.py", "tests/test_attacks.py", "-k",
              "jsma_defin or pruned_pair_search or (jsma and not (few_features or decrease_features or untargeted_jsma"
              " or batched_over or without_room or digits or non_robust or much_stronger or behavioral_bar"
              " or restarts_never_lose or at_least_as_strong_as_fgsm or eot or bpda or same_generator))"]),
    # The suites' composition (which attacks, in which order, with which hyperparameters) is model-free:
    # test_cascade.py's suite tests without the two that attack the digits MLP, and the suites' whole tables.
    "suites": ("src/robustlab/evaluation/suites.py",
               ["tests/test_cascade.py", "tests/test_evaluation_tables.py", "-k", "suite and not breaks"]),
    # The unbounded modes and the block runner on tests/test_evaluation_tables.py: a scripted attack on a model
    # whose logits are its inputs, so that every distance, credit, per-sample pass and call seed is known by
    # hand (the digits MLP of test_minimum_norm_evaluation.py and test_evaluation_runner.py would time every
    # mutant out). Without the test of where warnings point: mutmut's trampolines add stack frames.
    "minimum_norm": ("src/robustlab/evaluation/minimum_norm.py",
                     ["tests/test_evaluation_tables.py", "-k", "not point_at_the_caller"]),
    "targeted": ("src/robustlab/evaluation/targeted.py",
                 ["tests/test_evaluation_tables.py", "-k", "not point_at_the_caller"]),
    # Run with --functions on the functions that compute the table (seeding, crediting, cost, resume), not on
    # the input checks, the fingerprint or the warm-start point files (its 974 mutants take hours here).
    "runner": ("src/robustlab/evaluation/runner.py", ["tests/test_evaluation_tables.py", "-k", "not point_at_the_caller"]),
    # Boundary Attack and HopSkipJump on hand-built half-spaces (test_decision_definitions.py: Foolbox's proposals,
    # queues and walk, hsja.py's initialisation, bisections, gradient estimate and schedules), the linear-model
    # oracles of test_black_box.py and the conformance cases of test_attacks.py; not the digits MLP's tests.
    "decision": ("src/robustlab/attacks/decision.py",
                 ["tests/test_decision_definitions.py", "tests/test_attacks.py", "tests/test_black_box.py", "-k",
                  "(boundary or hopskipjump or decision or without_an_adversarial_start) and not (square or digits"
                  " or non_robust or much_stronger or behavioral_bar or start_from_the_init_attack"
                  " or return_already_adversarial or rejects_a_budget_smaller)"]),
    # The wrappers on hand-built models (test_composition_definitions.py: BPDA's oracle and mode, EOT's averages,
    # the ensemble's per-sample choice, transfer's surrogates, the reparameterization's Adam replay) and the
    # model-free checks of test_composition.py; not its digits-MLP tests (they train in every mutant's run).
    "composition": ("src/robustlab/attacks/composition.py",
                    ["tests/test_composition_definitions.py", "tests/test_composition.py", "-k",
                     "composition_definitions or single_draw_eot_warns or bad_settings_are_rejected"
                     " or rejects_bad_members"]),
    # Gaussian noise without a trained model: the conformance cases of test_attacks.py on its tiny untrained model,
    # the documented scale, and the 0-255 scale, clamping and augmentation of test_ode.py / test_ode_training.py.
    "noise": ("src/robustlab/attacks/noise.py",
              ["tests/test_noise_definitions.py", "tests/test_attacks.py", "tests/test_ode.py", "tests/test_ode_training.py",
               "-k", "gaussian and not (digits or behavioral_bar or much_stronger or non_robust)"]),
    # The detector-aware loss, the weight search and the metrics with rejection: test_lid.py's scripted search
    # (its other tests fit a LID detector on a trained model, which would time every mutant out).
    "rejection": ("src/robustlab/evaluation/rejection.py",
                  ["tests/test_rejection_definitions.py", "tests/test_lid.py", "-k", "definitions or binary_searches"]),
    # The shards' arithmetic and the process-group helpers: test_cascade.py's shard test and the sharded runs of
    # test_evaluation_tables.py (a process group of threads standing in for rank_and_world and all_gather; the
    # gloo runs of test_cascade.py and test_evaluation_runner.py spawn fresh interpreters and attack the digits MLP).
    "distributed": ("src/robustlab/evaluation/distributed.py",
                    ["tests/test_distributed_definitions.py", "tests/test_cascade.py::test_shard_ranges_cover_whole_blocks_once",
                     "tests/test_evaluation_tables.py", "-k", "not point_at_the_caller"]),
    # The record as the evaluations write it: test_evaluation_tables.py's tables and test_definitions.py's.
    "provenance": ("src/robustlab/evaluation/provenance.py",
                   ["tests/test_evaluation_tables.py", "tests/test_definitions.py", "-k", "not point_at_the_caller"]),
    # The gradient-masking checks on scripted attacks and hand-made models (test_diagnostics_definitions.py; every
    # other test of diagnose attacks the digits MLP, which trains in every mutant's run), and the eval-mode test.
    "diagnostics": ("src/robustlab/evaluation/diagnostics.py",
                    ["tests/test_diagnostics_definitions.py",
                     "tests/test_diagnostics.py::test_the_model_runs_in_eval_mode_and_its_mode_is_restored"]),
}

# Issue 15's six mutations: (name, file, original text, mutated text).
ISSUE15 = [
    ("APGD without momentum", "src/robustlab/attacks/apgd.py",
     "        if first:\n            return z\n", "        if True:\n            return z\n"),
    ("DLR normalised by Z_pi1 - Z_pi2", "src/robustlab/losses.py",
     "(top[:, 0] - top[:, 2] + 1e-12)", "(top[:, 0] - top[:, 1] + 1e-12)"),
    ("L-inf steepest direction = gradient scaled to max-norm 1", "src/robustlab/threat.py",
     "        return grad.sign()\n",
     "        return grad / grad.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))\n"),
    ("Square p schedule halved (in square_fraction)", "src/robustlab/attacks/square.py",
     "    return p_init / 2 ** sum(", "    return p_init / 2 / 2 ** sum("),
    ("Square p schedule halved (in the attack loop)", "src/robustlab/attacks/square.py",
     "p = square_fraction(self.p_init, iteration, self.queries, rescale=self.rescale_schedule)",
     "p = square_fraction(self.p_init, iteration, self.queries, rescale=self.rescale_schedule) / 2"),
    ("evaluation credits the last attack", "src/robustlab/evaluation/evaluate.py",
     "next((name for name in names if attacks[name][\"success\"]), None)",
     "next((name for name in reversed(names) if attacks[name][\"success\"]), None)"),
    ("C&W margin loss ignores kappa (losses.margin)", "src/robustlab/losses.py",
     "return value.clamp_max(kappa)", "return value.clamp_max(0.0)"),
    ("C&W margin loss ignores kappa (f6)", "src/robustlab/attacks/cw_objectives.py",
     ".clamp_min(-kappa)", ".clamp_min(-0.0)"),
    ("C&W margin loss ignores kappa (attacks' loss=margin)", "src/robustlab/attacks/gradient.py",
     "get_loss(self.loss, kappa=self.kappa) if name", "get_loss(self.loss) if name"),
    ("C&W success ignores kappa", "src/robustlab/attacks/carlini_wagner.py", "    if kappa == 0:", "    if True:"),
]
ISSUE15_TESTS = ["tests/test_definitions.py", "tests/test_golden_references.py"]

# Survivors read and judged equivalent (no test can tell them from the original): mutant -> why.
# mutmut numbers the mutants of a function in order, so an entry holds while that function is unchanged;
# `collect` marks a listed survivor whose diff no longer matches as not equivalent.
EQUIVALENT: dict[str, tuple[str, str]] = {
    # mutant: (a line the mutant's diff adds, the reason)
    "robustlab.losses.x__other_max__mutmut_11": ('float("-INF")', "Python parses -INF and -inf alike"),
    "robustlab.losses.x_dlr__mutmut_26": ("topk(need, )", "topk's default dim is the last, which is 1 for [N, K] logits"),
    "robustlab.losses.x_get_loss__mutmut_3": ("(options) or True else loss",
                                              "partial(loss) without options computes what loss does"),
    "robustlab.losses.x_get_loss__mutmut_12": ("(options) or True else fn",
                                               "partial(fn) without options computes what fn does"),
    "robustlab.losses.x_looks_like_probabilities__mutmut_18": (
        "< tol).all()", "differs only for a float32 row sum exactly 1 +- 1e-3, which no softmax output gives"),
    "robustlab.threat.xǁL0ǁproject__mutmut_32": ("if k > gain.shape[1]:", "k == pixels: the top-k path keeps every pixel with gain > 0, and a pixel with zero gain has clip(x_adv) == x"),
    "robustlab.threat.xǁL0ǁproject__mutmut_39": ("if k >= 0:", "topk(0) scatters nothing"),
    "robustlab.threat.xǁL0ǁproject__mutmut_51": ("gain.topk(k, )", "topk's default dim is the last, 1 for the [N, P] gains"),
    "robustlab.threat.xǁL0ǁproject__mutmut_56": ("keep &= gain >= 0", "a pixel with zero gain has clip(x_adv) == x, so keeping it changes nothing"),
    "robustlab.threat.xǁL0ǁsteepest_direction__mutmut_8": ("dtype=None)", "a float mask of 0/1 times the sign equals the bool mask times the sign"),
    "robustlab.threat.xǁL0ǁsteepest_direction__mutmut_10": ("zeros_like(magnitude, )", "a float mask of 0/1 times the sign equals the bool mask times the sign"),
    "robustlab.threat.xǁL1ǁproject__mutmut_32": ("amax(dim=None)", "any upper bracket works: the batch's max is one, and 50 halvings reach 2^-50 of it"),
    "robustlab.threat.xǁL1ǁproject__mutmut_36": (".sum(dim=None) <= self.eps", "a sample inside the ball then goes through the bisection, which ends within 2^-50 max|v| of lambda = 0"),
    "robustlab.threat.xǁL1ǁproject__mutmut_40": (".sum(dim=1) < self.eps", "differs only on an exact tie with eps"),
    "robustlab.threat.xǁL1ǁproject__mutmut_51": (".sum(dim=1) < self.eps", "differs only on an exact tie with eps"),
    "robustlab.threat.xǁL2ǁproject__mutmut_38": ("norm_at(t_hi) < self.eps", "differs only on an exact tie with eps"),
    "robustlab.threat.xǁL2ǁproject__mutmut_46": ("norm_at(mid) < self.eps", "differs only on an exact tie with eps"),
    "robustlab.threat.xǁThreatModelǁcontains__mutmut_11": ("(x_adv > lo - tol)", "differs only on an exact tie with lo - tol"),
    "robustlab.threat.xǁThreatModelǁcontains__mutmut_13": ("(x_adv < hi + tol)", "differs only on an exact tie with hi + tol"),
    "robustlab.threat.xǁThreatModelǁcontains__mutmut_21": ("< self.eps * (1 + tol) + tol)", "differs only on an exact tie with the tolerance"),
    "robustlab.threat.xǁThreatModelǁcontains__mutmut_2": ("and x.dtype in (torch.float16", "with one half-precision operand, type promotion already computes in float32"),
    "robustlab.threat.xǁL1ǁrandom_init__mutmut_4": ("if x.shape[0] == 0 and d == 0:", "the general path returns an empty batch or a featureless input unchanged too"),
    "robustlab.threat.xǁL1ǁrandom_init__mutmut_5": ("if x.shape[1] == 0 or d == 0:", "x.shape[1] == 0 implies d == 0; the general path handles an empty batch"),
    "robustlab.threat.xǁL1ǁrandom_init__mutmut_20": ("e = +torch.rand(", "e / e.sum() is unchanged when every e changes sign"),
    "robustlab.threat.xǁL1ǁrandom_init__mutmut_45": (".to(None) * 2 - 1", "integer +-1 signs times the float point give the same floats"),
    "robustlab.threat.xǁL1ǁrandom_init__mutmut_51": ("torch.randint(2, point.shape", "randint(high) is randint(0, high)"),
    "robustlab.threat.xǁL1ǁrandom_init__mutmut_61": ("x - (eps * point * signs)", "the signs are symmetric: the start has the same law"),
    "robustlab.threat.xǁL1ǁrandom_init__mutmut_63": ("eps * point / signs", "the signs are +-1"),
    "robustlab.threat.xǁL2ǁrandom_init__mutmut_51": ("x - per_sample(radius, x) * direction", "the Gaussian direction is symmetric: the start has the same law"),
    "robustlab.threat.xǁLinfǁrandom_init__mutmut_22": ("x - (2 * noise - 1) * eps", "2u - 1 is symmetric: the start has the same law"),
    "robustlab.threat.xǁL2ǁrandom_init__mutmut_5": ("or 2", "d replaces 0 only for inputs without features, whose draw is empty"),
    "robustlab.threat.xǁL1ǁsteepest_direction__mutmut_11": ("(g <= 0)", "a zero gradient filled with zero is unchanged"),
    "robustlab.threat.xǁL1ǁsteepest_direction__mutmut_15": ("(g >= 0)", "a zero gradient filled with zero is unchanged"),
    "robustlab.threat.xǁL1ǁsteepest_direction__mutmut_23": ("g.shape[1] == 0 and g.shape[0] == 0", "the general path returns an empty direction for an empty batch too"),
    "robustlab.threat.xǁL1ǁsteepest_direction__mutmut_27": ("g.shape[1] == 0 or g.shape[1] == 0", "the general path returns an empty direction for an empty batch too"),
    "robustlab.threat.xǁL1ǁsteepest_direction__mutmut_46": ("magnitude.topk(k, )", "topk's default dim is the last, 1 for [N, D]"),
    "robustlab.threat.xǁL2ǁdistance__mutmut_1": ("norm(p=None, dim=1)", "the default norm is the 2-norm"),
    "robustlab.threat.xǁL2ǁdistance__mutmut_3": ("norm(dim=1)", "the default norm is the 2-norm"),
    "robustlab.attacks.gradient.xǁFastGradientMethodǁ_run__mutmut_21": ("steepest_direction(grad, None)", "FGSM's norms (Linf, L2) ignore x_adv in steepest_direction"),
    "robustlab.attacks.gradient.xǁFastGradientMethodǁ_run__mutmut_23": ("steepest_direction(grad, )", "FGSM's norms (Linf, L2) ignore x_adv in steepest_direction"),
    "robustlab.attacks.gradient.xǁProjectedGradientDescentǁ_run__mutmut_18": ("if restart >= 0:", "before restart 0 nothing is broken, so the filter keeps every sample"),
    "robustlab.attacks.gradient.xǁBestIterateǁupdate__mutmut_15": ("(loss >= old_loss)", "differs only on an exact tie of the loss, where either iterate is as good"),
    # attacks/apgd.py (run on the source of fcd3ed0; AutoPGD._run and AutoPGDTargeted._run changed since, so their numbers may not match a new run)
    'robustlab.attacks.apgd.x__sparse_direction__mutmut_11': ('(g <= 0)', 'a coordinate with zero gradient has magnitude 0 already'),
    'robustlab.attacks.apgd.x__sparse_direction__mutmut_15': ('(g >= 0)', 'a coordinate with zero gradient has magnitude 0 already'),
    'robustlab.attacks.apgd.x__sparse_direction__mutmut_25': ('clamp(1, None)', "k never exceeds d: the attack's fraction is at most 2/3 (0.2, then sparsity / d / 1.5)"),
    'robustlab.attacks.apgd.x__sparse_direction__mutmut_27': ('clamp(1, )', "k never exceeds d: the attack's fraction is at most 2/3 (0.2, then sparsity / d / 1.5)"),
    'robustlab.attacks.apgd.x__sparse_direction__mutmut_37': ('magnitude.sort(descending=True)', "sort's default dim is the last, 1 for [N, D]"),
    'robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_l1_checkpoint__mutmut_29': ('_L1_MIN_STEP_FACTOR, None)', 'the step never exceeds eps: it starts at eps and is only reset to eps or divided by 1.5'),
    'robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_l1_checkpoint__mutmut_31': ('_L1_MIN_STEP_FACTOR, )', 'the step never exceeds eps: it starts at eps and is only reset to eps or divided by 1.5'),
    'robustlab.attacks.apgd.x_linearised_target_ranking__mutmut_11': ('(y[:, None] - offsets)', 'the same set of other classes, re-sorted by class index before ranking'),
    'robustlab.attacks.apgd.x_linearised_target_ranking__mutmut_79': ('distance.argsort(stable=True)', "argsort's default dim is the last, 1 for [N, K-1]"),
    'robustlab.attacks.apgd.x_linearised_target_ranking__mutmut_80': ('distance.argsort(dim=1, )', 'not distinguishable on CPU: its argsort keeps exact ties in order at these sizes (the tie of classes 4 and 5 in test_linear_ranking_follows_its_definition_... passes with stable=False)'),
    'robustlab.attacks.apgd.x_linearised_target_ranking__mutmut_82': ('stable=False', 'not distinguishable on CPU: its argsort keeps exact ties in order at these sizes (the tie of classes 4 and 5 in test_linear_ranking_follows_its_definition_... passes with stable=False)'),
    'robustlab.attacks.apgd.x__scale_and_clip__mutmut_15': ('(norm - 1e-12)', 'moves the scale by 2e-12 / ||delta|| relatively; at delta = 0 both return x'),
    'robustlab.attacks.apgd.x__random_start__mutmut_54': ('(size - 1e-12', 'moves the scale by 2e-12 / size relatively (size >= max |t| > 0)'),
    'robustlab.attacks.apgd.x_checkpoints__mutmut_4': ('while current < 100:', 'p_j never equals 1.00: 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99, then 1.05'),
    'robustlab.attacks.apgd.x_checkpoints__mutmut_5': ('while current <= 101:', 'p_j never lies in (1.00, 1.01]: 0.99, then 1.05'),
    'robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_step__mutmut_24': ('steepest_direction(s.grad, None)', "L-inf and L2 steepest_direction ignore x_adv (APGD's L1 steps go through _l1_step)"),
    'robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_step__mutmut_26': ('steepest_direction(s.grad, )', "L-inf and L2 steepest_direction ignore x_adv (APGD's L1 steps go through _l1_step)"),
    'robustlab.attacks.apgd.xǁAutoPGDǁ_run__mutmut_8': ('dtype=None, device=x.device)', 'torch.full infers int64 from the integer fill value -1'),
    'robustlab.attacks.apgd.xǁAutoPGDǁ_run__mutmut_12': ('-1, device=x.device)', 'torch.full infers int64 from the integer fill value -1'),
    'robustlab.attacks.apgd.xǁAutoPGDǁ_run__mutmut_47': ('if restart >= 0:', 'at restart 0 the broken samples are already out (clean check with early_stop) or there are none'),
    'robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_58': ('argsort(descending=True)', "argsort's default dim is the last, 1 for [N, K]"),
    'robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_91': ('dtype=None, device=x.device)', 'torch.full infers int64 from the integer fill value -1'),
    'robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_95': ('-1, device=x.device)', 'torch.full infers int64 from the integer fill value -1'),
    'robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_102': ('dtype=None, device=x.device)', 'torch.full infers int64 from the integer fill value -1'),
    'robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_106': ('-1, device=x.device)', 'torch.full infers int64 from the integer fill value -1'),
    # attacks/apgd.py with give_up (the run of _descend, both __post_init__ and AutoPGD._run on 526c8e2)
    "robustlab.attacks.apgd.xǁAutoPGDǁ_run__mutmut_56": ("if restart >= 0:", "at restart 0 the broken samples are already out (clean check with early_stop) or there are none"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_19": ("self.give_up or 1.0", "the fraction is read only at give-up checkpoints, which exist only when give_up is set"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_65": ("x_prev=None", "the first step returns z without the momentum term, and x_prev is the start before it is read"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_109": ("increases=torch.zeros(n, dtype=None", "increase counts kept in float32 are exact, and compare with rho * window alike"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_112": ("increases=torch.zeros(n, device=x.device)", "increase counts kept in float32 are exact, and compare with rho * window alike"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_130": ("if (give_up_at) or True else", "the smallest margin is read only when give_up is set"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_138": ("if (margin_clean is None) and False else", "margin_clean is None only without give_up, where it is never read"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_205": ("(s.idx.numel() == n) and False", "while every sample runs, s.idx is arange(n): updating those rows is updating all"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_247": ("i - 1 < self.steps", "a checkpoint after the last iterate changes only the run's state, which is then discarded (the best points are returned)"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_249": ("i + 1 <= self.steps", "a checkpoint after the last iterate changes only the run's state, which is then discarded (the best points are returned)"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_282": ("i - 1 < self.steps", "giving up after the last iterate changes nothing: the loop ends there"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_284": ("i + 1 <= self.steps", "giving up after the last iterate changes nothing: the loop ends there"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_287": ("s.margin_min >= give_up", "differs only on an exact tie of the smallest margin with give_up times the clean margin"),
    # AutoPGDTargeted._run on the current source (the run of 2026-12-05 23:46 UTC; its earlier numbers above are of fcd3ed0)
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_103": ('dtype=None, device=x.device)', 'torch.full infers int64 from the integer fill value -1'),
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_107": ('-1, device=x.device)', 'torch.full infers int64 from the integer fill value -1'),
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_114": ('dtype=None, device=x.device)', 'torch.full infers int64 from the integer fill value -1'),
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_118": ('-1, device=x.device)', 'torch.full infers int64 from the integer fill value -1'),
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_62": ('argsort(descending=True)', "argsort's default dim is the last, 1 for [N, K]"),
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_75": ('(self.keep_near is None) and False', 'the clean margin is read only with keep_near set'),
    # attacks/apgd.py, the same functions on the rate rule of f638290 (the run of 2026-12-05 23:28 UTC)
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_29": ("self.give_up or 1.0", "the safety factor is read only at give-up checkpoints, which exist only when give_up is set"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_74": ("if (halfway) or True else", "the smallest margin is read only at give-up checkpoints, which exist only when give_up is set"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_89": ("x_prev=None", "the first step returns z without the momentum term, and x_prev is the start before it is read"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_139": ("increases=torch.zeros(n, dtype=None", "increase counts kept in float32 are exact, and compare with rho * window alike"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_142": ("increases=torch.zeros(n, device=x.device)", "increase counts kept in float32 are exact, and compare with rho * window alike"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_234": ("(s.idx.numel() == n) and False", "while every sample runs, s.idx is arange(n): updating those rows is updating all"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_311": ("i - 1 < self.steps", "giving up after the last iterate changes nothing: the loop ends there"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_313": ("i + 1 <= self.steps", "giving up after the last iterate changes nothing: the loop ends there"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_323": ("s.margin_min >= near", "differs only on an exact tie of the smallest margin with keep_near times the clean margin"),
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_328": ("(s.margin_min >= safety", "differs only on an exact tie of the smallest margin with the projected progress"),
    # evaluation/metrics.py
    "robustlab.evaluation.metrics.x__normal_quantile__mutmut_3": ("lo, hi = -11.0, 10.0", "any bracket around the quantile does: 100 halvings of a width of 21 end far below float64 resolution (the result may differ in the last bit)"),
    "robustlab.evaluation.metrics.x__normal_quantile__mutmut_4": ("lo, hi = -10.0, 11.0", "any bracket around the quantile does: 100 halvings of a width of 21 end far below float64 resolution (the result may differ in the last bit)"),
    "robustlab.evaluation.metrics.x__normal_quantile__mutmut_6": ("range(101)", "after 100 halvings the bracket (20 / 2^100) is below float64 resolution already"),
    "robustlab.evaluation.metrics.x__normal_quantile__mutmut_19": ("<= p:", "differs only where the normal CDF at a midpoint equals p exactly"),
    # evaluation/evaluate.py
    "robustlab.evaluation.evaluate.x_evaluate__mutmut_24": ("distributed=None", "run_blocks reads distributed by its truth: None and False alike"),
    "robustlab.evaluation.evaluate.x_evaluate__mutmut_40": ("resume=resume, progress=progress)", "run_blocks' default is distributed=False, evaluate's too"),
    "robustlab.evaluation.evaluate.x_evaluate__mutmut_25": ("progress=None)", "run_blocks reads progress by its truth (progress and rank == 0): None and False alike"),
    "robustlab.evaluation.evaluate.x_evaluate__mutmut_41": ("distributed=distributed, )", "run_blocks' default is progress=False, evaluate's too"),
    "robustlab.evaluation.evaluate.x_named_attacks__mutmut_8": ('getattr(attack, "name", None)', "every Attack has a name (a class attribute, '' unless set): getattr's default is never used"),
    "robustlab.evaluation.evaluate.x_named_attacks__mutmut_11": ('getattr(attack, "name", )', "every Attack has a name (a class attribute, '' unless set): getattr's default is never used"),
    "robustlab.evaluation.evaluate.x_named_attacks__mutmut_14": ('getattr(attack, "name", "XXXX")', "every Attack has a name (a class attribute, '' unless set): getattr's default is never used"),
    # attacks/square.py
    "robustlab.attacks.square.xǁSquareAttackǁ_init_linf__mutmut_4": ("threat.eps / _random_signs", "the signs are +-1: eps / s == eps * s"),
    "robustlab.attacks.square.xǁSquareAttackǁ_step_linf__mutmut_110": ("threat.eps / signs), x_best)", "the signs are +-1: eps / s == eps * s"),
    "robustlab.attacks.square.xǁSquareAttackǁ_step_linf__mutmut_51": ("x + threat.eps / signs) - x_best", "the signs are +-1: eps / s == eps * s"),
    "robustlab.attacks.square.xǁSquareAttackǁ_step_l2__mutmut_108": ("bump / _random_signs", "the signs are +-1: b / s == b * s"),
    "robustlab.attacks.square.xǁSquareAttackǁ_init_l2__mutmut_95": ("pattern[:, None] / signs", "the signs are +-1: b / s == b * s"),
    "robustlab.attacks.square.xǁSquareAttackǁ_step_linf__mutmut_52": ("<= _UNCHANGED_TOL", "differs only on an exact tie with the tolerance"),
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_126": ("going = margin >= 0", "a sample is searched only where margin > 0 anyway (searched = going & (margin > 0))"),
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_139": ("spent <= self.queries", "spent is at most queries - 1 in the loop"),
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_146": ("going = ~((margin", "a given-up sample's margin no longer moves and its threshold s * r * log2(Q / c) only falls at later checkpoints, so it stays given up; broken samples are not searched either way"),
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_150": ("(margin >= self.give_up", "differs only on an exact tie with the threshold"),
    "robustlab.attacks.square.xǁSquareAttackǁ_objective__mutmut_19": ("get_loss(loss, ) if loss", "the margin capped at 0 differs only at adversarial points, which are kept whatever their loss and end the search"),
    "robustlab.attacks.square.x__rectangle_bump__mutmut_57": ("clamp_min(1.000000000001)", "a rectangle's norm is at least 1 (its centre carries 1 + 1/4 + ...) and exactly 1 only for the 1x1 one, which _square_bump renormalises to -1"),
    "robustlab.attacks.square.x__place_bump__mutmut_2": ("side = bump.shape[1]", "the bump is square"),
    "robustlab.attacks.square.x__random_signs__mutmut_9": ("torch.randint(2, shape", "randint(high) is randint(0, high)"),
    "robustlab.attacks.square.x__rectangle_bump__mutmut_49": ("+= 2.0 / (k + 1) ** 2", "doubling every weight is undone by the normalisation (exactly: a power of 2)"),
    "robustlab.attacks.square.x__windows__mutmut_20": ("torch.randint(w - side, (n,)", "randint(high) is randint(0, high)"),
    "robustlab.attacks.square.x__windows__mutmut_7": ("torch.randint(h - side, (n,)", "randint(high) is randint(0, high)"),
    "robustlab.attacks.square.xǁSquareAttackǁ_init_l2__mutmut_75": ("torch.randint(2, (n, h // side", "randint(high) is randint(0, high)"),
    "robustlab.attacks.square.xǁSquareAttackǁ_step_l2__mutmut_84": ("torch.randint(2, (n,)", "randint(high) is randint(0, high)"),
    "robustlab.attacks.square.xǁSquareAttackǁ_init_l2__mutmut_107": ("clamp_min(1.000000000001), delta)", "the start's norm before scaling is sqrt(tiles x channels) >= 5"),
    "robustlab.attacks.square.xǁSquareAttackǁ_init_l2__mutmut_42": ("tile.clamp(None, size // side - 1)", "pixels before the first tile (negative tile index) are zeroed by the valid mask whatever tile they read"),
    "robustlab.attacks.square.xǁSquareAttackǁ_objective__mutmut_14": ('(loss == "margin") and False', "the margin capped at 0 differs only at adversarial points, which are kept whatever their loss and end the search"),
    "robustlab.attacks.square.xǁSquareAttackǁ_objective__mutmut_21": ('loss == "XXmarginXX"', "the margin capped at 0 differs only at adversarial points, which are kept whatever their loss and end the search"),
    "robustlab.attacks.square.xǁSquareAttackǁ_objective__mutmut_22": ('loss == "MARGIN"', "the margin capped at 0 differs only at adversarial points, which are kept whatever their loss and end the search"),
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_155": ("& (margin > near)", "differs only on an exact tie with keep_near times the clean margin"),
    # Square's search loop, moved into _search by the cold search (issue 14; run of 2026-12-06)
    "robustlab.attacks.square.xǁSquareAttackǁ_search__mutmut_11": ("going = margin >= 0", "a sample is searched only where margin > 0 anyway (searched = going & (margin > 0))"),
    "robustlab.attacks.square.xǁSquareAttackǁ_search__mutmut_24": ("spent <= budget", "spent is at most budget - 1 in the loop (the condition was dead and is removed since)"),
    "robustlab.attacks.square.xǁSquareAttackǁ_search__mutmut_31": ("going = ~((margin", "a given-up sample's margin no longer moves and its threshold s * r * log2(budget / c) only falls at later checkpoints, so it stays given up; broken samples are not searched either way"),
    "robustlab.attacks.square.xǁSquareAttackǁ_search__mutmut_35": ("(margin >= self.give_up", "differs only on an exact tie with the threshold"),
    "robustlab.attacks.square.xǁSquareAttackǁ_search__mutmut_40": ("& (margin > near)", "differs only on an exact tie with keep_near times the clean margin"),
    "robustlab.attacks.square.xǁSquareAttackǁ_search__mutmut_47": ("return", "nothing follows the loop: return and break end _search alike"),
    # attacks/base.py (the template)
    "robustlab.attacks.base.x_check_logits__mutmut_8": ("(isinstance(logits, Tensor)) or True", "logits is a Tensor on this line: the line above raised otherwise"),
    "robustlab.attacks.base.x_check_logits__mutmut_10": ("type(None).__name__", "logits is a Tensor on this line: the line above raised otherwise"),
    "robustlab.attacks.base.x_check_inputs__mutmut_47": ("x_min <= lo - _BOX_TOLERANCE", "differs only on an exact tie with the tolerance"),
    "robustlab.attacks.base.x_check_inputs__mutmut_49": ("x_max >= hi + _BOX_TOLERANCE", "differs only on an exact tie with the tolerance"),
    "robustlab.attacks.base.x_resolve_targets__mutmut_21": ('float("-INF")', "Python parses -INF and -inf alike"),
    "robustlab.attacks.base.x_resolve_targets__mutmut_33": ("(n) or True", "for n == 0 a draw of shape (0,) is the same empty offset"),
    "robustlab.attacks.base.xǁAttackǁ__call____mutmut_23": ("isinstance(y, Tensor) or y.is_inference()", "y is a Tensor here (check_inputs returned it), and a clone of a normal tensor is the same labels"),
    "robustlab.attacks.base.xǁModelOracleǁlosses_and_grads__mutmut_22": ("retain_graph=i <= len(losses) - 1", "keeping the graph after the last backward only frees it later: the same gradients"),
    "robustlab.attacks.base.xǁModelOracleǁlosses_and_grads__mutmut_23": ("retain_graph=i < len(losses) + 1", "keeping the graph after the last backward only frees it later: the same gradients"),
    # attacks/deepfool.py (run on the source of ce8e237)
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_run__mutmut_28": ("range(self.steps + 2)", "the loop always ends at step == steps (the break there): the extra round is never reached"),
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_candidate_classes__mutmut_12": ("topk(count, )", "topk's default dim is the last, 1 for [N, K] logits"),
    "robustlab.attacks.deepfool.x__clearly_adversarial__mutmut_32": ("is_adversarial(logits, None, targets)", "a lead past the margin already means misclassified (target winning); untargeted, `pred != None` is True"),
    "robustlab.attacks.deepfool.x__clearly_adversarial__mutmut_33": ("is_adversarial(logits, labels, None)", "a target leading past the margin is the prediction, and targets equal to the labels are rejected: misclassified too"),
    "robustlab.attacks.deepfool.x__clearly_adversarial__mutmut_36": ("is_adversarial(logits, labels, )", "a target leading past the margin is the prediction, and targets equal to the labels are rejected: misclassified too"),
    "robustlab.attacks.deepfool.x__clearly_adversarial__mutmut_37": ("(lead >= _TIE_MARGIN", "differs only on an exact tie of the lead with the margin"),
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_step__mutmut_44": ("(x <= lo) & (w <= 0)", "a coordinate with zero gradient is zero whether masked or not"),
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_step__mutmut_48": ("(x >= hi) & (w >= 0)", "a coordinate with zero gradient is zero whether masked or not"),
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_step__mutmut_64": ("closer = dist <= best_dist", "differs only on an exact tie of two candidates' distances"),
    # attacks/fab.py (run on the source of ce8e237)
    "robustlab.attacks.fab.x__amounts_l1__mutmut_4": ("w_abs.sort(descending=True)", "sort's default dim is the last, 1 for [M, D]"),
    "robustlab.attacks.fab.x__amounts_l1__mutmut_20": ("(filled <= c[:, None])", "on an exact tie (a full cap covers c exactly) that coordinate counts as full and the next gets (c - filled) / w = 0: the same amounts"),
    "robustlab.attacks.fab.x__amounts_l1__mutmut_97": ("c[:, None] >= 0", "where c == 0 every amount is 0 already (nothing is filled, the partial amount is 0 / w)"),
    "robustlab.attacks.fab.x__amounts_l2__mutmut_8": ("w_abs >= 0, caps", "a coordinate with w_i = 0 has weight 0 in the capped sum (no kink, wherever its knot lies) and gets amount 0 below"),
    "robustlab.attacks.fab.x__closest_boundary__mutmut_5": ("(labels[:, None] - torch.arange", "the same other classes in another order: the nearest differs only on an exact tie of distances"),
    "robustlab.attacks.fab.xǁFABTargetedǁ_run__mutmut_39": ("topk(rounds, )", "topk's default dim is the last, 1 for [N, K] logits"),
    "robustlab.attacks.fab.x__amounts_linf__mutmut_8": ("torch.where(w_abs >= 0, caps", "a coordinate with w_i = 0 has weight 0 in the capped sum (no kink, wherever its knot lies) and direction sign(w_i) = 0"),
    "robustlab.attacks.fab.x__closest_boundary__mutmut_68": ("dim=2) - _MIN_DUAL)", "moves each distance by about 2e-12 relatively: the nearest class changes only where two distances agree to 1e-12"),
    "robustlab.attacks.fab.x__solve_capped_sum__mutmut_18": ("torch.where(weights >= 0, weights * knots", "a zero weight comes with an inf knot (L∞, L2): its NaN (0 * inf) sorts past the last positive weight, where it is never passed and free_after = 0 marks infeasibility anyway"),
    "robustlab.attacks.fab.x__solve_capped_sum__mutmut_39": ("torch.where(free >= 0, knots * free", "free = 0 only past the last positive weight: a finite knot gives 0 either way; an inf knot's NaN is never passed, and free_after = 0 marks infeasibility anyway"),
    "robustlab.attacks.fab.x__solve_capped_sum__mutmut_45": ("(value_at_knot <= c[:, None])", "differs only where c equals the value at a knot exactly (both give that knot then, but at the box's farthest corner)"),
    "robustlab.attacks.fab.xǁFastAdaptiveBoundaryǁ_step__mutmut_45": ("clamp(None, self.alpha_max)", "a ratio of norms is never negative"),
    "robustlab.attacks.fab.x__merge__mutmut_3": ("(found.distance <= best.distance[index])", "differs only on an exact tie of distances (the target of the earlier round is kept)"),
    "robustlab.attacks.fab.x__solve_capped_sum__mutmut_47": ("d = None", "passed == d implies free_after = 0 (the exclusive sum past the last knot), which marks infeasibility alone"),
    "robustlab.attacks.fab.x__solve_capped_sum__mutmut_108": ("(passed == d) & (free_after <= 0)", "passed == d implies free_after = 0; free_after = 0 with passed < d (only zero weights left) gives t = (c - s) / tiny, huge: the amounts are capped alike"),
    "robustlab.attacks.fab.x__solve_capped_sum__mutmut_110": ("(free_after < 0)", "free_after is a sum of non-negative weights; where it is 0, t = (c - s) / tiny is huge and the amounts are capped as for inf"),
    "robustlab.attacks.fab.x__solve_capped_sum__mutmut_129": ("torch.where(c >= 0, t", "at c = 0, t is 0, or inf only where every weight is 0, whose amounts are discarded (direction sign(0) = 0, or w = 0 masked)"),
    "robustlab.attacks.fab.x_hyperplane_projection__mutmut_5": ("1.0).to(None)", "+-1 is exact in float32, and w * flip promotes to w's dtype"),
    "robustlab.attacks.fab.x_hyperplane_projection__mutmut_12": ("torch.where(c <= 0, -1.0", "at c = 0 every amount is 0, whichever way w is turned"),
    "robustlab.attacks.fab.x_hyperplane_projection__mutmut_18": ("w = w / flip[:, None]", "flip is +-1"),
    "robustlab.attacks.fab.x_hyperplane_projection__mutmut_28": ("torch.where(w >= 0, upper", "a coordinate with w_i = 0 moves by direction sign(w_i) = 0 times its amount: its cap does not matter"),
    "robustlab.attacks.fab.x_hyperplane_projection__mutmut_36": ("torch.where(w <= 0, -lower", "a coordinate with w_i = 0 moves by direction sign(w_i) = 0 times its amount: its cap does not matter"),
    "robustlab.attacks.fab.xǁFastAdaptiveBoundaryǁ_random_start__mutmut_56": ("return (x - per_sample(radius, x) * u)", "the direction u is symmetric: the start has the same law"),
    "robustlab.attacks.fab.x_hyperplane_projection__mutmut_37": ("torch.where(w < 1, -lower", "reached only for w_i <= 0: it differs at w_i = 0, which moves by direction sign(w_i) = 0 times its amount"),
    "robustlab.attacks.fab.xǁFABTargetedǁ_run__mutmut_61": ("best.distance < threat.eps", "differs only on an exact tie of a distance with eps"),
    # attacks/fmn.py (FMN and the minimum-norm bookkeeping)
    "robustlab.attacks.fmn.x__project_l0__mutmut_6": ("magnitude.argsort(descending=True)", "argsort's default dim is the last, 1 for [N, P]"),
    "robustlab.attacks.fmn.x__project_l1__mutmut_6": ("v.abs().sort(descending=True)", "sort's default dim is the last, 1 for [N, D]"),
    "robustlab.attacks.fmn.x__project_l1__mutmut_17": ("device=v.device, dtype=None)", "an int64 j (1..D, exact) divides the float cumsum to the same floats"),
    "robustlab.attacks.fmn.x__project_l1__mutmut_21": ("device=v.device, )", "an int64 j (1..D, exact) divides the float cumsum to the same floats"),
    "robustlab.attacks.fmn.x__project_l1__mutmut_30": ("/ j) >= 0", "at equality, u_j = (cumsum_j - eps) / j, the threshold from j equals the one from j - 1 ((j - 1) u_j = cumsum_{j-1} - eps): the same theta"),
    "robustlab.attacks.fmn.xǁFastMinimumNormǁ_adapt_eps__mutmut_13": ("torch.minimum(eps + 1, (eps * (1 - gamma)).floor())", "L0's eps is an integer and gamma > 0, so floor(eps (1 - gamma)) <= eps - 1 already: the eps -+ 1 term never decides (at eps = 0 both give 0 after the clamp)"),
    "robustlab.attacks.fmn.x_farthest_corner__mutmut_9": ("x - lo >= hi - x", "at a tie both corners are equally far"),
    "robustlab.attacks.fmn.xǁMinimumNormBestǁupdate__mutmut_3": ("(distance <= self.distance)", "an exact tie of distances (FMN projects onto the best norm's sphere, so they occur): either iterate is a smallest success, at the same distance"),
    "robustlab.attacks.fmn.xǁMinimumNormBestǁupdate__mutmut_9": ("(margin <= self.margin)", "an exact tie of margins: either failed iterate is as close to the boundary"),
    # attacks/ddn.py
    "robustlab.attacks.ddn.x__descent_loss__mutmut_9": ("F.cross_entropy(logits, labels, )", "the mean scales every gradient by 1 / N, which the normalisation removes (the loss value is not used); it differs only for a gradient norm in [1e-12, N 1e-12], where the fallback direction takes over"),
    "robustlab.attacks.ddn.x__descent_loss__mutmut_17": ("F.cross_entropy(logits, targets, )", "the mean scales every gradient by 1 / N, which the normalisation removes (the loss value is not used); it differs only for a gradient norm in [1e-12, N 1e-12], where the fallback direction takes over"),
    "robustlab.attacks.ddn.xǁDecoupledDirectionNormǁ_run__mutmut_88": ("norm(dim=1) <= 1e-12", "differs only on an exact tie of the gradient norm with 1e-12"),
    # attacks/cw_objectives.py
    "robustlab.attacks.cw_objectives.x__softplus_minus_log2__mutmut_13": ("m >= _SOFTPLUS_SWITCH", "at m = 20 exactly both formulas give softplus(20) - log 2 (to the last bits)"),
    "robustlab.attacks.cw_objectives.x__split__mutmut_20": ('float("-INF")', "Python parses -INF and -inf alike"),
    **{f"robustlab.attacks.cw_objectives.x_f{k}__mutmut_1": ("kappa: float = 1.0", f"f{k} does not use kappa") for k in (1, 2, 3, 4, 5, 7)},
    # evaluation/minimum_norm.py
    "robustlab.evaluation.minimum_norm.xǁMinimumNormEvaluationǁcurve__mutmut_6": (
        "isinstance(eps_grid, Tensor)) and False", "iterating a 1-D tensor gives 0-d tensors, and float() of each is tolist()'s float"),
    "robustlab.evaluation.minimum_norm.x__check_eps__mutmut_5": ("finite=None", "is_number tests `not finite`: None is False there"),
    "robustlab.evaluation.minimum_norm.x__round_up__mutmut_1": ("if value < 0:", "only called with the largest finite best distance > 0 (default_eps_grid)"),
    "robustlab.evaluation.minimum_norm.x__round_up__mutmut_3": ("return 1.0", "only called with the largest finite best distance > 0 (default_eps_grid)"),
    # evaluation/targeted.py
    "robustlab.evaluation.targeted.x_evaluate_targeted__mutmut_70": ("random_targets = None", "read only in the loop over the samples; it stays None only when k is None, i.e. there are none"),
    "robustlab.evaluation.targeted.x_evaluate_targeted__mutmut_97": ("dtype=None)", "torch.tensor of Python ints is int64 already (an empty list gives [] either way)"),
    "robustlab.evaluation.targeted.x_evaluate_targeted__mutmut_99": ("torch.tensor(run.labels, )", "torch.tensor of Python ints is int64 already (an empty list gives [] either way)"),
    # evaluation/runner.py (the functions that compute the table)
    "robustlab.evaluation.runner.x_cross_check__mutmut_26": ("topk(2, )", "topk's default dim is the last, 1 for [N, K] logits"),
    "robustlab.evaluation.runner.x_cross_check__mutmut_41": (") < MISMATCH_RTOL", "differs only on an exact tie of the gap with the tolerance"),
    "robustlab.evaluation.runner.x__disagrees__mutmut_9": (">= MISMATCH_RTOL", "differs only on an exact tie with the tolerance"),
    "robustlab.evaluation.runner.x__shares__mutmut_11": ("(m + r)", "the shares are zipped with the call's m samples: only the first m are read, the same"),
    "robustlab.evaluation.runner.xǁTableǁconcat__mutmut_21": ("parts[1].num_classes", "every rank gets the same number of classes from the clean pass (gathered)"),
    "robustlab.evaluation.runner.xǁTableǁconcat__mutmut_24": ("set_steps(parts[1].steps)", "the ranks run the same steps; if one differs, either order raises"),
    "robustlab.evaluation.runner.xǁTableǁconcat__mutmut_28": ("p.start + merged.start", "merged.start is 0: the first shard starts at sample 0"),
    "robustlab.evaluation.runner.xǁTableǁconcat__mutmut_29": ("p.stop + merged.start", "merged.start is 0: the first shard starts at sample 0"),
    "robustlab.evaluation.runner.xǁ_Runnerǁattack__mutmut_2": ("not table.steps or not table.results", "set_steps sets steps and results together: both are empty or neither"),
    "robustlab.evaluation.runner.xǁ_Runnerǁattack__mutmut_87": ("self._attackable(table, i, None)", "while step j runs on a block, the steps from j on have not (their results there are None): all steps or the first j give the same answer"),
    "robustlab.evaluation.runner.xǁ_Runnerǁattack__mutmut_107": ("track=any(warm[j - 1:])", "extra tracking is unobservable: the points are read only by a later warm step, and saved only while one is to come, when both track"),
    "robustlab.evaluation.runner.xǁ_Runnerǁclean_pass__mutmut_32": ("table.forwards[i] = 1", "the clean pass runs only on a fresh table, whose counts are all 0"),
    "robustlab.evaluation.runner.xǁ_Runnerǁsave__mutmut_27": ("unlink(missing_ok=None)", "the state names a points file only once written, and a resumed run refuses a missing one before it saves"),
    "robustlab.evaluation.runner.xǁ_Runnerǁsave__mutmut_29": ("unlink(missing_ok=False)", "the state names a points file only once written, and a resumed run refuses a missing one before it saves"),
    "robustlab.evaluation.runner.xǁ_Runnerǁ_start_block__mutmut_8": ("new_full((hi + lo,)", "a longer margin vector: only its first hi - lo entries, the block's rows, are ever read"),
    "robustlab.evaluation.runner.xǁ_Runnerǁ_start_block__mutmut_14": ("(path is not None) or True", "a block starts past step 0 only when resumed, from a state file: path is never None here"),
    "robustlab.evaluation.runner.xǁ_Runnerǁ_start_block__mutmut_18": ("path is None and name is None", "a block starts past step 0 only when resumed, from a state file: path is never None here"),
    "robustlab.evaluation.runner.xǁ_Runnerǁ_start_block__mutmut_28": ("weights_only=None)", "torch.load's default is weights_only=True (torch >= 2.6)"),
    "robustlab.evaluation.runner.xǁ_Runnerǁ_start_block__mutmut_31": ("map_location=self.x.device, )", "torch.load's default is weights_only=True (torch >= 2.6)"),
    "robustlab.evaluation.runner.x_run_blocks__mutmut_47": ("fp: dict[str, Any] = None", "read only with a state file or several ranks, where it is set first"),
    "robustlab.evaluation.runner.x_run_blocks__mutmut_50": ("or world >= 1:", "fingerprints a single process without a state file too: one more hash, nothing read from it"),
    "robustlab.evaluation.runner.xǁ_Runnerǁ__init____mutmut_6": ("self.time_before = None", "clean_pass sets it from the table before anything reads it"),
    "robustlab.evaluation.runner.xǁ_Runnerǁ__init____mutmut_7": ("self.time_before = 1.0", "clean_pass sets it from the table before anything reads it"),
    "robustlab.evaluation.runner.x__jsonable_config__mutmut_10": ("0x[0-9a-fa-f]+", "Python writes addresses in lowercase hex"),
    "robustlab.evaluation.runner.x_check_run__mutmut_24": ("(isinstance(indices, Tensor)) and False", "torch.as_tensor of a tensor is that tensor"),
    "robustlab.evaluation.runner.x__jsonable_config__mutmut_12": ('"XXXX", v)', "any fixed replacement makes two addresses alike"),
    "robustlab.evaluation.runner.xǁ_Runnerǁattack__mutmut_50": ('"warm_start", None)', "the flags are only read as truth values, where None is False"),
    # attacks/carlini_wagner.py (C&W L2's core, run with --functions on the source of 885b1e7)
    "robustlab.attacks.carlini_wagner.x__confident__mutmut_13": ("(logits.shape[0], 2)", "scatter_add reads src only where the [N, 1] index has entries: the first column, the same shift"),
    "robustlab.attacks.carlini_wagner.xǁ_TanhEncodingǁdistance_and_grad__mutmut_2": ("super().distance_and_grad(None,", "the base class ignores v (it works on the image)"),
    "robustlab.attacks.carlini_wagner.x_next_const__mutmut_38": ("upper <= _UPPER_KNOWN", "differs only on an exact tie of the upper bound with 1e9"),
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL2ǁ_descend__mutmut_117": ("keep = ~(loss >= _ABORT_RATIO * previous)", "differs only on an exact tie of the loss with 0.9999 times the previous one"),
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL2ǁ_descend__mutmut_121": ("if not bool(None):", "compacting with an all-true mask keeps every row, in order: the same state"),
    "robustlab.attacks.carlini_wagner.xǁ_Smallestǁoffer__mutmut_3": ("(distance <= self.distance[rows])", "an exact tie of distances: either iterate is a smallest success, at the same distance"),
    # attacks/decision.py
    "robustlab.attacks.decision.xǁHopSkipJumpǁ_estimate_direction__mutmut_21": (
        "max(2, m * features)", "differs only for one sample of one feature, whose unit estimate is +-1 whatever draws the chunking makes"),
    "robustlab.attacks.decision.xǁHopSkipJumpǁ_estimate_direction__mutmut_84": (
        "(probes - origin) * scale", "scales each sample's u by delta^2 instead of 1: the estimate is normalised per sample"),
    "robustlab.attacks.decision.xǁHopSkipJumpǁ_estimate_direction__mutmut_104": (
        "hit.to(None) * 2 - 1", "phi in int64: the same +-1, and the sums are float"),
    "robustlab.attacks.decision.xǁHopSkipJumpǁ_estimate_direction__mutmut_126": (
        "* evaluations", "a positive factor per estimate, which is then normalised"),
    "robustlab.attacks.decision.xǁHopSkipJumpǁ_boundary_search__mutmut_5": (
        "if (m) or True else", "for no rows, amax over dim 1 of a [0, d] tensor is the empty tensor the else branch makes"),
    "robustlab.attacks.decision.xǁHopSkipJumpǁ_boundary_search__mutmut_11": (
        "x.new_zeros(1)", "for no rows the loop never runs, and the final point broadcasts the one radius to 0 rows"),
    "robustlab.attacks.decision.xǁHopSkipJumpǁ_run__mutmut_204": (
        "new_distance <= best_distance[todo]", "differs only on an exact tie of two iterates' distances, either a closest point"),
    "robustlab.attacks.decision.xǁBoundaryAttackǁ_adapt__mutmut_30": (
        "(rate >= 0.25)", "the rate over 30 outcomes is a multiple of 1/30, never exactly 0.25"),
    # attacks/composition.py
    "robustlab.attacks.composition.xǁMinimumNormEnsembleǁ_run__mutmut_12": ('float("INF")', "Python parses INF and inf alike"),
    "robustlab.attacks.composition.xǁMinimumNormEnsembleǁ_run__mutmut_67": ('float("INF")', "Python parses INF and inf alike"),
    "robustlab.attacks.composition.xǁMinimumNormEnsembleǁ_run__mutmut_16": (
        "dtype=None, device=x.device)", "torch.full infers int64 from the integer fill value -1"),
    "robustlab.attacks.composition.xǁMinimumNormEnsembleǁ_run__mutmut_20": (
        "-1, device=x.device)", "torch.full infers int64 from the integer fill value -1"),
    "robustlab.attacks.composition.xǁReparameterizationǁ__post_init____mutmut_34": (
        "finite=None)", "is_number reads finite as a truth value: None is falsy like False"),
    "robustlab.attacks.composition.xǁReparameterizationǁ_run__mutmut_34": ('float("INF")', "Python parses INF and inf alike"),
    "robustlab.attacks.composition.xǁReparameterizationǁ_run__mutmut_73": ('float("INF")', "Python parses INF and inf alike"),
    "robustlab.attacks.composition.xǁReparameterizationǁ_run__mutmut_75": (
        "is_adversarial(logits, None, targets)", "targeted: the labels are unused; untargeted: every candidate counts as a "
        "success, and since untargeted success is margin > 0 the best iterate (success, then margin) is the same"),
    **{f"robustlab.attacks.composition.xǁReparameterizationǁ_run__mutmut_{n}": (
        f"zero_grad(set_to_none={flag})", "z's gradient zeroed instead of freed before each backward: the same values")
       for n, flag in ((46, "None"), (47, "False"))},
    # attacks/noise.py
    "robustlab.attacks.noise.x_random_gaussian_noise__mutmut_24": (
        "<= probability", "differs only for a uniform draw exactly equal to probability (2^-24 per float32 draw)"),
    "robustlab.attacks.noise.x_random_gaussian_noise__mutmut_35": (
        "[choice] / noisy", "sigma / True is sigma; sigma / False = inf only where torch.where then keeps x"),
    "robustlab.attacks.noise.xǁGaussianNoiseǁ_run__mutmut_63": (
        "if self.draws >= 1:", "with draws = 1 every sample takes the one draw already"),
    # evaluation/rejection.py
    "robustlab.evaluation.rejection.x_detector_aware_loss__mutmut_20": ("is_number(weight, finite=None)", "a non-finite weight is refused by the next clause (math.isfinite) with the same message"),
    "robustlab.evaluation.rejection.x_detector_aware_loss__mutmut_22": ("is_number(weight, )", "a non-finite weight is refused by the next clause (math.isfinite) with the same message"),
    "robustlab.evaluation.rejection.x_detector_aware_loss__mutmut_23": ("is_number(weight, finite=True)", "a non-finite weight is refused by the next clause (math.isfinite) with the same message"),
    "robustlab.evaluation.rejection.x_detector_aware_loss__mutmut_64": ('float("INF")', "Python parses INF and inf alike"),
    "robustlab.evaluation.rejection.x_rejection_metrics__mutmut_53": ("if (fooled.any()) or True else", "the mean over no fooled sample is NaN too"),
    "robustlab.evaluation.rejection.x_rejection_metrics__mutmut_57": ('float("NAN")', "Python parses NAN and nan alike"),
    # evaluation/diagnostics.py
    "robustlab.evaluation.diagnostics.x__black_box__mutmut_49": ("                       )", "the skip's numbers are {} exactly when there are no candidates, and {} is the default"),
    # evaluation/diagnostics.py, the second run (on the fixed source of random-sampling and the fractions)
    "robustlab.evaluation.diagnostics.x__zero_gradients__mutmut_87": ('{101 * nan:.1f}', 'the pass branch is reached only with nan == 0'),
    "robustlab.evaluation.diagnostics.x__non_differentiable__mutmut_22": ('ctx.generator("XXfinite-differencesXX")', "another fixed key: still a generator of this purpose's own, seeded from the seed"),
    "robustlab.evaluation.diagnostics.x__non_differentiable__mutmut_23": ('ctx.generator("FINITE-DIFFERENCES")', "another fixed key: still a generator of this purpose's own, seeded from the seed"),
    "robustlab.evaluation.diagnostics.x__non_differentiable__mutmut_35": ('device=ctx.x.device, dtype=None)', 'a float32 direction is a unit direction to 6e-8, the same one for autograd and the differences'),
    "robustlab.evaluation.diagnostics.x__non_differentiable__mutmut_39": ('device=ctx.x.device, )', 'a float32 direction is a unit direction to 6e-8, the same one for autograd and the differences'),
    "robustlab.evaluation.diagnostics.x__non_differentiable__mutmut_141": ('if cosine <= 0.5:', 'differs only on an exact tie of the cosine with 0.5'),
    "robustlab.evaluation.diagnostics.x__non_differentiable__mutmut_158": ('if cosine <= 0.9:', 'differs only on an exact tie of the cosine with 0.9'),
    "robustlab.evaluation.diagnostics.x__loss_rises__mutmut_30": ('(attacked >= clean + 1e-6)', 'differs only on an exact tie of the attacked loss with the clean loss + 1e-6'),
    "robustlab.evaluation.diagnostics.xǁ_Contextǁis_stochastic__mutmut_11": ('spread >= 1e-5', 'differs only on an exact tie of the spread with the threshold'),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_26": ('ctx.generator("XXrandom-samplingXX")', "another fixed key: still a generator of this purpose's own, seeded from the seed"),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_27": ('ctx.generator("RANDOM-SAMPLING")', "another fixed key: still a generator of this purpose's own, seeded from the seed"),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_44": ('4097 // max(1', 'chunking changes how the draws are batched (so which random numbers each gets), not their number or law'),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_49": ('4096 // max(2, x.shape[0])', 'chunking changes how the draws are batched (so which random numbers each gets), not their number or law'),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_82": ('.to(None) * 2 - 1', 'integer +-1 signs times the float eps give the same floats'),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_88": ('torch.randint(2, xs.shape', 'randint(high) is randint(0, high)'),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_95": ('.to(xs.dtype) * 3 - 1', 'signs -1 and 2: the projection onto the L-inf ball takes 2 eps back to eps, the same vertices'),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_102": ('xs - ctx.threat.eps * signs', 'the signs are symmetric: the vertices have the same law'),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_103": ('ctx.threat.eps / signs', 'the signs are +-1: eps / s == eps * s'),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_105": ('draw = start - torch.arange', 'start - j and start + j have the same parity: the same draws are vertices'),
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_118": ('(draw % 2 != 1)', 'the even draws instead of the odd ones: still every other draw of each sample a vertex'),
    # attacks/carlini_wagner.py, C&W L0 and L∞ (run with --functions on the source of 4fb02b3)
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL0ǁ_tighten__mutmut_59": ("(first_above + 1).to(None)", "torch.minimum promotes the int64 count to the float64 cap: the same values"),
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL0ǁ_tighten__mutmut_62": ("valid.sum(dim=1).to(None)", "torch.minimum promotes the int64 count to the float64 cap: the same values"),
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL0ǁ_tighten__mutmut_63": ("valid.sum(dim=None).to(cap.dtype)", "a count past a sample's valid pixels re-freezes frozen ones (scored inf, sorted last): valid & ~freeze is the same"),
    "robustlab.attacks.carlini_wagner.xǁ_WarmStartedRoundsǁ_run__mutmut_49": ("steps=torch.zeros(n, dtype=None,", "step counts kept in float32 are exact (below 2^24) and compare with max_iterations alike"),
    "robustlab.attacks.carlini_wagner.xǁ_WarmStartedRoundsǁ_run__mutmut_52": ("steps=torch.zeros(n, device=x.device)", "step counts kept in float32 are exact (below 2^24) and compare with max_iterations alike"),
    # attacks/jsma.py (the whole-file run of 2026-12-05 23:39 UTC)
    'robustlab.attacks.jsma.x__best_of__mutmut_22': ('rows = max(2, _PAIR_CHUNK', 'the rows per chunk only bound the temporaries: at least 2 instead of 1 changes nothing below 2**22 / F**2 < 1, i.e. F > 2048, where it only costs memory'),
    'robustlab.attacks.jsma.x__best_of__mutmut_30': ('range(0, m, )', 'chunks starting at every row overlap and write the same values again (slower, same result)'),
    'robustlab.attacks.jsma.x__pick_pairs__mutmut_119': ('features / 4)', 'an integer count is at most F / 4 exactly when it is at most F // 4'),
    'robustlab.attacks.jsma.x__pick_pairs__mutmut_142': ('.to(torch.uint8), stable=True)', "sort's default dim is the last, 1 for [M, F]"),
    'robustlab.attacks.jsma.x__pick_pairs__mutmut_144': ('.to(None)', 'Tensor.to(None) returns the bool tensor itself, which sorts stably with False (kept) first as uint8 does'),
    'robustlab.attacks.jsma.x__pick_pairs__mutmut_32': ('a.topk(seeds, ).indices', "topk's default dim is the last, 1 for [M, F]"),
    'robustlab.attacks.jsma.x__pick_pairs__mutmut_38': ('.topk(seeds, largest=False)', "topk's default dim is the last, 1 for [M, F]"),
    'robustlab.attacks.jsma.xǁJacobianSaliencyMapǁ_run__mutmut_3': ('self.theta >= 0', 'theta = 0 is refused by __post_init__'),
    'robustlab.attacks.jsma.xǁJacobianSaliencyMapǁ_run__mutmut_52': ('range(max_pairs + 2)', 'the loop always breaks at step == max_pairs, before the extra iteration'),
    # attacks/decision.py, the functions of the run of 2026-12-05 23:50 UTC
    'robustlab.attacks.decision.xǁBoundaryAttackǁ_run__mutmut_116': ('threat.distance(x[todo], candidate) <= threat', 'differs only on an exact tie of distances: a candidate is moved strictly towards x (source step > 0) after a step on the sphere'),
    'robustlab.attacks.decision.xǁBoundaryAttackǁ_run__mutmut_73': ('step -= 1', 'step is read only as step % update_stats_every == 0, which holds for -k exactly when for k'),
    # attacks/carlini_wagner.py, the functions of the run of 2026-12-05 23:59 UTC
    'robustlab.attacks.carlini_wagner.x__check_positive__mutmut_4': ('finite=None)', 'the range check 0 < value < inf already refuses inf and nan, with the same message'),
    'robustlab.attacks.carlini_wagner.x__check_positive__mutmut_6': ('is_number(value, )', 'the range check 0 < value < inf already refuses inf and nan, with the same message'),
    'robustlab.attacks.carlini_wagner.x__check_positive__mutmut_7': ('finite=True)', 'the range check 0 < value < inf already refuses inf and nan, with the same message'),
    'robustlab.attacks.carlini_wagner.xǁ_Adamǁreset__mutmut_2': ('.to(None)', 'a bool mask multiplies the moments as its float copy does'),
}

# Survivors that only a test on an accelerator can kill: a tensor made on the default device instead of
# x's (CPU either way here; attacks cannot run on the "meta" device, they need values). mutant -> added line.
NEEDS_GPU: dict[str, str] = {
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_run__mutmut_9": "dtype=torch.bool, device=None)",
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_run__mutmut_12": "dtype=torch.bool, )",
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_run__mutmut_16": "dtype=torch.int64, device=None)",
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_run__mutmut_19": "dtype=torch.int64, )",
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_run__mutmut_22": "arange(n, device=None)",
    "robustlab.attacks.deepfool.xǁDeepFoolǁ_run__mutmut_24": "arange(n, )",
    "robustlab.attacks.fab.x__amounts_l1__mutmut_71": "arange(d, device=None)",
    "robustlab.attacks.fab.x__amounts_l1__mutmut_73": "arange(d, )",
    "robustlab.attacks.fab.x__closest_boundary__mutmut_8": "arange(1, k, device=None)",
    "robustlab.attacks.fab.x__closest_boundary__mutmut_11": "arange(1, k, )",
    "robustlab.attacks.fab.x__closest_boundary__mutmut_81": "arange(m, device=None)",
    "robustlab.attacks.fab.xǁFastAdaptiveBoundaryǁ_random_start__mutmut_18": "device=None, dtype=x.dtype) - 1",
    "robustlab.attacks.fab.xǁFastAdaptiveBoundaryǁ_random_start__mutmut_22": "generator=generator, dtype=x.dtype) - 1",
    "robustlab.attacks.fab.xǁFastAdaptiveBoundaryǁ_random_start__mutmut_28": "randn(x.shape, generator=generator, device=None, dtype=x.dtype)",
    "robustlab.attacks.fab.xǁFastAdaptiveBoundaryǁ_random_start__mutmut_32": "randn(x.shape, generator=generator, dtype=x.dtype)",
    "robustlab.attacks.fab.x__closest_boundary__mutmut_83": "arange(m, )",
    "robustlab.attacks.apgd.xǁAutoPGDǁ_run__mutmut_9": "device=None)",
    "robustlab.attacks.apgd.xǁAutoPGDǁ_run__mutmut_13": "dtype=torch.int64, )",
    "robustlab.attacks.apgd.xǁAutoPGDǁ_run__mutmut_19": "arange(x.shape[0], device=None)",
    "robustlab.attacks.apgd.xǁAutoPGDǁ_run__mutmut_21": "arange(x.shape[0], )",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_100": "arange(n, device=None)",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_102": "arange(n, )",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_110": "dtype=torch.int64, device=None)",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_113": "dtype=torch.int64, )",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_116": "dtype=torch.bool, device=None)",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_119": "dtype=torch.bool, )",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_130": "arange(n, device=None)",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_132": "arange(n, )",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_140": "dtype=torch.int64, device=None)",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_143": "dtype=torch.int64, )",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_146": "dtype=torch.bool, device=None)",
    "robustlab.attacks.apgd.xǁ_AutoPGDBaseǁ_descend__mutmut_149": "dtype=torch.bool, )",
    "robustlab.evaluation.evaluate.x_evaluate__mutmut_54": "provenance(seed=seed, wall_time=",  # device "cpu" by default
    "robustlab.evaluation.minimum_norm.x_evaluate_minimum_norm__mutmut_119": "provenance(seed=settings.seed, wall_time=",
    "robustlab.evaluation.targeted.x_evaluate_targeted__mutmut_201": "provenance(seed=settings.seed, wall_time=",
    "robustlab.evaluation.runner.x_cross_check__mutmut_32": "torch.tensor(flipped, device=None)",
    "robustlab.evaluation.runner.x_cross_check__mutmut_34": "torch.tensor(flipped, )",
    "robustlab.evaluation.runner.xǁ_Runnerǁ_call__mutmut_4": "torch.tensor(alive, device=None)",
    "robustlab.evaluation.runner.xǁ_Runnerǁ_call__mutmut_6": "torch.tensor(alive, )",
    "robustlab.evaluation.runner.xǁ_Runnerǁ_call__mutmut_11": "torch.Generator(device=None)",
    "robustlab.evaluation.runner.xǁ_Runnerǁ_start_block__mutmut_27": "map_location=None, weights_only=True)",
    "robustlab.evaluation.runner.xǁ_Runnerǁ_start_block__mutmut_30": "torch.load(path.with_name(name), weights_only=True)",
    # Square's bookkeeping made on the default device (the template cannot run on "meta": it reads values)
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_21": "dtype=torch.int64, device=None)",
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_24": "dtype=torch.int64, )",
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_85": "dtype=torch.bool, device=None)",
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_88": "dtype=torch.bool, )",
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_86": "dtype=torch.bool, device=None)",
    "robustlab.attacks.square.xǁSquareAttackǁ_run__mutmut_89": "dtype=torch.bool, )",
    # given targets on the CPU for labels on an accelerator ("meta" cannot show it: the range checks read values)
    "robustlab.attacks.base.x_resolve_targets__mutmut_54": "targets.to(device=None, dtype=torch.int64)",
    "robustlab.attacks.base.x_resolve_targets__mutmut_56": "targets.to(dtype=torch.int64)",
    # C&W L2's search constants made on the default device
    "robustlab.attacks.carlini_wagner.xǁ_Smallestǁempty__mutmut_7": "dtype=torch.float64, device=None)",
    "robustlab.attacks.carlini_wagner.xǁ_Smallestǁempty__mutmut_11": "dtype=torch.float64, )",
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL2ǁ_descend__mutmut_18": "dtype=torch.bool, device=None)",
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL2ǁ_descend__mutmut_21": "dtype=torch.bool, )",
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL2ǁ_descend__mutmut_25": "arange(x.shape[0], device=None)",
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL2ǁ_descend__mutmut_27": "arange(x.shape[0], )",
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL2ǁ_run__mutmut_7": "dtype=torch.float64, device=None)",
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL2ǁ_run__mutmut_11": "dtype=torch.float64, )",
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL0ǁ_tighten__mutmut_67": "arange(score.shape[1], device=None)",
    "robustlab.attacks.carlini_wagner.xǁCarliniWagnerL0ǁ_tighten__mutmut_69": "arange(score.shape[1], )",
    "robustlab.attacks.carlini_wagner.xǁ_WarmStartedRoundsǁ_run__mutmut_36": "rows=torch.arange(n, device=None)",
    "robustlab.attacks.carlini_wagner.xǁ_WarmStartedRoundsǁ_run__mutmut_38": "rows=torch.arange(n, )",
    "robustlab.attacks.carlini_wagner.xǁ_WarmStartedRoundsǁ_run__mutmut_50": "dtype=torch.int64, device=None)",
    "robustlab.attacks.carlini_wagner.xǁ_WarmStartedRoundsǁ_run__mutmut_53": "steps=torch.zeros(n, dtype=torch.int64, )",
    "robustlab.attacks.carlini_wagner.xǁ_WarmStartedRoundsǁ_run__mutmut_62": "dtype=torch.bool, device=None), x.clone()",
    "robustlab.attacks.carlini_wagner.xǁ_WarmStartedRoundsǁ_run__mutmut_65": "dtype=torch.bool, ), x.clone()",
    # DDN's fallback direction drawn on the default device
    "robustlab.attacks.ddn.xǁDecoupledDirectionNormǁ_run__mutmut_15": "generator=generator, device=None, dtype=x.dtype)",
    "robustlab.attacks.ddn.xǁDecoupledDirectionNormǁ_run__mutmut_19": "randn(x.shape, generator=generator, dtype=x.dtype)",
    # FMN's projections and bookkeeping made on the default device
    "robustlab.attacks.fmn.x__project_l0__mutmut_13": "arange(magnitude.shape[1], device=None)",
    "robustlab.attacks.fmn.x__project_l0__mutmut_15": "arange(magnitude.shape[1], )",
    "robustlab.attacks.fmn.x__project_l1__mutmut_16": "device=None, dtype=v.dtype)",
    "robustlab.attacks.fmn.x__project_l1__mutmut_20": "arange(1, v.shape[1] + 1, dtype=v.dtype)",
    "robustlab.attacks.fmn.xǁMinimumNormBestǁstart__mutmut_18": "dtype=torch.bool, device=None)",
    "robustlab.attacks.fmn.xǁMinimumNormBestǁstart__mutmut_21": "dtype=torch.bool, ))",
    # Gaussian noise drawn, and its sigmas and bookkeeping made, on the default device
    **{f"robustlab.attacks.noise.x_add_gaussian_noise__mutmut_{n}": text for n, text in (
        (5, "device=None)"), (8, "dtype=x.dtype, )"), (19, "device=None, dtype=x.dtype)"),
        (23, "generator=generator, dtype=x.dtype)"))},
    **{f"robustlab.attacks.noise.x_random_gaussian_noise__mutmut_{n}": text for n, text in (
        (20, "device=None)"), (23, "generator=generator, )"), (29, "device=None)"), (33, "generator=generator, )"),
        (38, "device=None)"), (41, "dtype=x.dtype, )"))},
    **{f"robustlab.attacks.noise.xǁGaussianNoiseǁ_run__mutmut_{n}": text for n, text in (
        (12, "device=None)"), (15, "dtype=torch.bool, )"), (21, "device=None, dtype=x.dtype)"),
        (25, "generator=generator, dtype=x.dtype)"))},
    # HopSkipJump's probe directions drawn on the default device
    **{f"robustlab.attacks.decision.xǁHopSkipJumpǁ_estimate_direction__mutmut_{n}": text for n, text in (
        (51, "device=None, dtype=x_adv.dtype)"), (55, "generator=generator, dtype=x_adv.dtype)"),
        (61, "device=None, dtype=x_adv.dtype)"), (65, "generator=generator, dtype=x_adv.dtype)"))},
    # the ensemble's bookkeeping made on the default device
    **{f"robustlab.attacks.composition.xǁMinimumNormEnsembleǁ_run__mutmut_{n}": text for n, text in (
        (5, "device=None)"), (8, 'float("inf"), )'), (17, "device=None)"), (21, "dtype=torch.int64, )"))},
    **{f"robustlab.attacks.decision.xǁHopSkipJumpǁ_boundary_search__mutmut_{n}": text for n, text in (
        (86, "torch.arange(m, device=None)"), (88, "torch.arange(m, )"))},
    # Boundary Attack's orthogonal noise drawn on the default device
    "robustlab.attacks.decision.xǁBoundaryAttackǁ_proposals__mutmut_18": "device=None, dtype=x.dtype)",
    "robustlab.attacks.decision.xǁBoundaryAttackǁ_proposals__mutmut_22": "generator=generator, dtype=x.dtype)",
    # the adaptive attack's search state made on the default device
    "robustlab.evaluation.rejection.x_adaptive_attack__mutmut_26": "dtype=torch.bool, device=None)",
    "robustlab.evaluation.rejection.x_adaptive_attack__mutmut_29": "dtype=torch.bool, )",
    "robustlab.evaluation.rejection.x_adaptive_attack__mutmut_34": "dtype=x.dtype, device=None)",
    "robustlab.evaluation.rejection.x_adaptive_attack__mutmut_38": "dtype=x.dtype, )",
    # the diagnostics' per-purpose generator made on the default device
    "robustlab.evaluation.diagnostics.xǁ_Contextǁgenerator__mutmut_2": "torch.Generator(device=None)",
    # the diagnostics' draws and their bookkeeping made on the default device
    "robustlab.evaluation.diagnostics.x__non_differentiable__mutmut_34": 'generator=g, device=None, dtype=ctx.x.dtype)',
    "robustlab.evaluation.diagnostics.x__non_differentiable__mutmut_38": 'randn(ctx.x.shape, generator=g, dtype=ctx.x.dtype)',
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_32": 'dtype=torch.bool, device=None)',
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_35": 'dtype=torch.bool, )',
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_87": 'generator=g, device=None).to(xs.dtype)',
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_92": 'generator=g, ).to(xs.dtype)',
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_108": 'arange(xs.shape[0], device=None)',
    "robustlab.evaluation.diagnostics.x__random_sampling__mutmut_110": 'arange(xs.shape[0], ) % draws',
    # the decision attacks' uniform noise and success histories made on the default device
    "robustlab.attacks.decision.x__uniform_box__mutmut_7": "device=None, dtype=like.dtype)",
    "robustlab.attacks.decision.x__uniform_box__mutmut_11": "generator=generator, dtype=like.dtype)",
    **{f"robustlab.attacks.decision.xǁ_Historyǁ__init____mutmut_{n}": text for n, text in (
        (5, "device=None)"), (9, "dtype=torch.bool, )"), (13, "device=None)"), (16, "dtype=torch.int64, )"))},
    'robustlab.attacks.jsma.x__best_of__mutmut_5': 'dtype=torch.int64, device=None)',
    'robustlab.attacks.jsma.x__best_of__mutmut_8': 'dtype=torch.int64, )',
    'robustlab.attacks.jsma.x__best_of__mutmut_13': 'dtype=a.dtype, device=None)',
    'robustlab.attacks.jsma.x__best_of__mutmut_16': 'dtype=a.dtype, )',
    'robustlab.attacks.jsma.x__pick_pairs__mutmut_124': 'dtype=torch.int64, device=None)',
    'robustlab.attacks.jsma.x__pick_pairs__mutmut_127': 'dtype=torch.int64, )',
    'robustlab.attacks.jsma.x__pick_pairs__mutmut_150': 'arange(width, device=None)',
    'robustlab.attacks.jsma.x__pick_pairs__mutmut_152': 'arange(width, )',
    'robustlab.attacks.jsma.xǁJacobianSaliencyMapǁ_random_targets__mutmut_13': 'generator=generator, device=None)',
    'robustlab.attacks.jsma.xǁJacobianSaliencyMapǁ_random_targets__mutmut_18': 'generator=generator, )',
    'robustlab.attacks.jsma.xǁJacobianSaliencyMapǁ_run__mutmut_33': 'dtype=torch.bool, device=None)',
    'robustlab.attacks.jsma.xǁJacobianSaliencyMapǁ_run__mutmut_36': 'dtype=torch.bool, )',
    'robustlab.attacks.jsma.xǁJacobianSaliencyMapǁ_run__mutmut_40': 'arange(x.shape[0], device=None)',
    'robustlab.attacks.jsma.xǁJacobianSaliencyMapǁ_run__mutmut_42': 'arange(x.shape[0], )',
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_104": 'dtype=torch.int64, device=None)',
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_108": 'dtype=torch.int64, )',
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_115": 'dtype=torch.int64, device=None)',
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_119": 'dtype=torch.int64, )',
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_124": 'arange(n, device=None)',
    "robustlab.attacks.apgd.xǁAutoPGDTargetedǁ_run__mutmut_126": 'arange(n, )',
    'robustlab.attacks.decision.xǁBoundaryAttackǁ_run__mutmut_53': '_History(n, 100, None)',
    'robustlab.attacks.decision.xǁBoundaryAttackǁ_run__mutmut_61': '_History(n, 30, None)',
    'robustlab.attacks.decision.xǁ_DecisionBasedǁ_initialise__mutmut_5': 'arange(n, device=None)',
    'robustlab.attacks.decision.xǁ_DecisionBasedǁ_initialise__mutmut_7': 'arange(n, )',
    'robustlab.attacks.decision.xǁ_Decisionsǁ__init____mutmut_5': 'dtype=torch.int64, device=None)',
    'robustlab.attacks.decision.xǁ_Decisionsǁ__init____mutmut_8': 'dtype=torch.int64, )',
}


def _python() -> str:
    return sys.executable


def _scratch(name: str) -> Path:
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
    return work


def _scratch_name(name: str, functions: list[str] | None) -> str:
    if not functions:
        return name
    joined = "-".join(f.replace(".", "_") for f in functions)
    # Many functions make a directory name longer than the file system allows: name it by a digest.
    return name + "-" + (joined if len(joined) <= 150 else hashlib.sha1(joined.encode()).hexdigest()[:12])


def mutant_globs(name: str, functions: list[str]) -> list[str]:
    """mutmut's names for the mutants of ``functions`` (``f`` or ``Class.method``) in module ``name``:
    ``<module>.x_f__mutmut_<n>`` and ``<module>.xǁClassǁmethod__mutmut_<n>``."""
    module = MODULES[name][0].removeprefix("src/").removesuffix(".py").replace("/", ".")
    globs = []
    for f in functions:
        cls, _, method = f.rpartition(".")
        globs.append(f"{module}.xǁ{cls}ǁ{method}__mutmut_*" if cls else f"{module}.x_{f}__mutmut_*")
    return globs


def run_module(name: str, max_children: int, resume: bool = False, functions: list[str] | None = None) -> dict:
    path, tests = MODULES[name]
    scratch = _scratch_name(name, functions)
    work = WORK / scratch if resume and (WORK / scratch / "mutants").exists() else _scratch(scratch)
    (work / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["src/"]\n'
        f'only_mutate = ["{path}"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        'process_isolation = "forkserver"\n'
        "use_git_change_detection = false\n\n"
        "[tool.pytest.ini_options]\n"
        'testpaths = ["tests"]\n'
    )
    # One OpenMP thread: workers are forked from a process that has imported torch, and a forked
    # child can hang in a thread pool its parent started (seen here: idle workers, never timed out).
    env = dict(os.environ, ROBUSTLAB_DATA=os.environ.get("ROBUSTLAB_DATA", "/work/shared/data"),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # mutmut puts its mutated copy of src/ first on the path
    start = time.perf_counter()
    run = subprocess.run([_python(), "-m", "mutmut", "run", "--max-children", str(max_children),
                          *mutant_globs(name, functions or [])], cwd=work, env=env, capture_output=True, text=True)
    result = collect(name, functions)
    result.update(wall_s=round(time.perf_counter() - start, 1), mutmut_exit_code=run.returncode,
                  log_tail=(run.stdout + run.stderr)[-400:] if run.returncode else "")
    return result


def collect(name: str, functions: list[str] | None = None) -> dict:
    """Read the results of a (possibly interrupted) run from its scratch directory; with
    ``functions``, of the run restricted to them (the other mutants are not counted)."""
    path, tests = MODULES[name]
    work = WORK / _scratch_name(name, functions)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    listing = subprocess.run([_python(), "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                             capture_output=True, text=True).stdout
    status = dict(re.findall(r"^\s+(\S+): (.+)$", listing, flags=re.M))
    if functions:
        globs = mutant_globs(name, functions)
        status = {m: s for m, s in status.items() if any(fnmatch.fnmatchcase(m, g) for g in globs)}
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    survivors = []
    for mutant, s in sorted(status.items()):
        if s not in ("killed", "timeout", "not checked"):
            diff = subprocess.run([_python(), "-m", "mutmut", "show", mutant], cwd=work, env=env,
                                  capture_output=True, text=True).stdout
            entry = {"mutant": mutant, "status": s, "diff": "\n".join(diff.splitlines()[1:])}
            added, why = EQUIVALENT.get(mutant, (None, None))
            if added is not None and any(line.startswith("+") and added in line for line in diff.splitlines()):
                entry["equivalent"] = why
            gpu = NEEDS_GPU.get(mutant)
            if gpu is not None and any(line.startswith("+") and gpu in line for line in diff.splitlines()):
                entry["needs_gpu"] = True
            survivors.append(entry)
    total = len(status)
    checked = total - counts.get("not checked", 0)
    equivalent = sum("equivalent" in e for e in survivors)
    return {
        "file": path, **({"functions": functions} if functions else {}), "tests": tests, "mutants": total, "checked": checked, "counts": counts, "killed": killed,
        "score": killed / checked if checked else None, "equivalent": equivalent,
        "score_without_equivalent": killed / (checked - equivalent) if checked > equivalent else None,
        "needs_gpu": sum(bool(e.get("needs_gpu")) for e in survivors),
        "survivors": survivors,
    }


def mark(result: dict) -> None:
    """Mark a recorded result's survivors again from ``EQUIVALENT`` and ``NEEDS_GPU`` (entries
    added after a recheck), and recount; what the recheck found is kept."""
    for entry in result["survivors"]:
        added = [line for line in entry["diff"].splitlines() if line.startswith("+")]
        text, why = EQUIVALENT.get(entry["mutant"], (None, None))
        if text is not None and any(text in line for line in added):
            entry["equivalent"] = why
        gpu = NEEDS_GPU.get(entry["mutant"])
        if gpu is not None and any(gpu in line for line in added):
            entry["needs_gpu"] = True
    equivalent = sum("equivalent" in e for e in result["survivors"])
    result["equivalent"] = equivalent
    result["needs_gpu"] = sum(bool(e.get("needs_gpu")) for e in result["survivors"])
    checked = result["checked"]
    result["score_without_equivalent"] = result["killed"] / (checked - equivalent) if checked > equivalent else None


def apply_mutant(source: str, mutant: str, diff: str) -> str:
    """``source`` with the mutant (its ``mutmut show`` diff, as recorded) applied to the function the mutant
    names. Not ``mutmut apply``: mutmut 3.8.1 patches the first function of the file with the method's name,
    whatever its class (``CarliniWagnerL0._mask``'s mutant lands in ``_WarmStartedRounds._mask``), so a recheck of
    a method whose name recurs in the module ran the wrong mutant."""
    qualified = mutant.rpartition(".")[2].rsplit("__mutmut_", 1)[0]
    cls, _, func = qualified.removeprefix("x").partition("ǁ")[2].partition("ǁ") if "ǁ" in qualified else (
        "", "", qualified.removeprefix("x_"))
    tree = ast.parse(source)
    scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body if cls else tree.body
    node = next(n for n in scope if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == func)
    lines = source.splitlines(keepends=True)
    start, end = node.lineno - 1, node.end_lineno
    indent = " " * node.col_offset
    body = [line.removeprefix(indent) for line in lines[start:end]]
    header, _, rest = diff.split("\n@@", 1)[1].partition("\n")
    if "\n@@" in rest:
        raise SystemExit(f"{mutant}: a diff of more than one hunk")
    hunk = rest.splitlines()
    old = [h[1:].rstrip() for h in hunk if h[:1] in (" ", "-")]
    new = [h[1:] + "\n" for h in hunk if h[:1] in (" ", "+")]
    # The hunk's lines (context and removed) located in the function's source, dedented; exactly once.
    at = [i for i in range(len(body) - len(old) + 1) if [line.rstrip() for line in body[i:i + len(old)]] == old]
    if len(at) != 1:
        raise SystemExit(f"{mutant}: its diff matches the source of {qualified} {len(at)} times (header{header})")
    body[at[0]:at[0] + len(old)] = new
    return "".join(lines[:start]) + "".join(indent + line if line.strip() else line for line in body) + "".join(
        lines[end:])


def recheck(name: str, result: dict, functions: list[str] | None = None, deselect: str | None = None,
            only: list[str] | None = None, jobs: int = 1, skip: list[str] | None = None) -> None:
    """Run the survivors of an earlier run again against the current tests (added since): each
    survivor is applied with ``mutmut apply`` to the scratch copy of the source and the module's
    test selection runs on it (not the equivalent and GPU-only ones, which no test here can kill).
    Marks each survivor ``killed_by_current_tests``. ``jobs``: workers, each on a copy of the
    scratch directory. ``deselect``: a ``-k`` expression of tests
    left out (tests of a source change made after the run, which fail on the run's source).
    The selection must pass on the run's unmutated source first: a test that fails there would
    count every survivor as killed."""
    path, tests = MODULES[name]
    if only:  # the tests written since the run; the others already ran on every mutant
        tests = [*only, *tests[tests.index("-k"):]] if "-k" in tests else list(only)
        result["recheck_tests"] = only
    if deselect:
        if "-k" in tests:
            i = tests.index("-k")
            tests = [*tests[:i + 1], f"({tests[i + 1]}) and not ({deselect})", *tests[i + 2:]]
        else:
            tests = [*tests, "-k", f"not ({deselect})"]
        result["recheck_deselected"] = deselect
    work = WORK / _scratch_name(name, functions)
    shutil.rmtree(work / "tests", ignore_errors=True)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
    original = (work / path).read_text()
    env = dict(os.environ, PYTHONPATH=str(work / "src"),
               ROBUSTLAB_DATA=os.environ.get("ROBUSTLAB_DATA", "/work/shared/data"))
    baseline = subprocess.run([_python(), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=work,
                              env=env, capture_output=True, text=True)
    if baseline.returncode != 0:
        raise SystemExit(f"the current tests fail on the run's unmutated source ({path}); deselect the tests of "
                         f"later source changes (--recheck-deselect):\n{baseline.stdout[-2000:]}")
    todo = [s for s in result["survivors"] if "equivalent" not in s and not s.get("needs_gpu")]  # others: no test here
    todo = [s for s in todo if not s.get("killed_by_current_tests")]  # killed at an earlier recheck: tests only grow
    if skip:  # functions rechecked by a --functions run of their own (faster: mutmut runs only the tests reaching them)
        globs = mutant_globs(name, skip)
        todo = [s for s in todo if not any(fnmatch.fnmatchcase(s["mutant"], g) for g in globs)]
        result["recheck_skipped_functions"] = skip

    def check(chunk: list[dict], copy: Path) -> None:  # each worker applies mutants in a copy of its own
        copy_env = dict(env, PYTHONPATH=str(copy / "src"))
        for survivor in chunk:
            try:
                (copy / path).write_text(apply_mutant(original, survivor["mutant"], survivor["diff"]))
                r = subprocess.run([_python(), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=copy,
                                   env=copy_env, capture_output=True, text=True)
                survivor["killed_by_current_tests"] = r.returncode != 0
            finally:
                (copy / path).write_text(original)
            print(f"  {survivor['mutant']}: {'killed' if survivor['killed_by_current_tests'] else 'survives'}", flush=True)

    copies = [work] + [work.with_name(f"{work.name}-job{i}") for i in range(1, jobs)]
    for copy in copies[1:]:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(work, copy, symlinks=True)
    with ThreadPoolExecutor(len(copies)) as pool:
        list(pool.map(check, [todo[i::len(copies)] for i in range(len(copies))], copies))
    for copy in copies[1:]:
        shutil.rmtree(copy, ignore_errors=True)
    rechecked = [s for s in result["survivors"] if "killed_by_current_tests" in s]
    result["killed_after_recheck"] = result["killed"] + sum(s["killed_by_current_tests"] for s in rechecked)
    result["score_after_recheck"] = result["killed_after_recheck"] / result["checked"] if result["checked"] else None


def run_issue15() -> list[dict]:
    out = []
    for name, path, old, new in ISSUE15:
        work = _scratch("issue15")
        f = work / path
        text = f.read_text()
        if text.count(old) != 1:
            out.append({"mutation": name, "file": path, "error": "the original text is not found once: update ISSUE15"})
            continue
        f.write_text(text.replace(old, new))
        env = dict(os.environ, PYTHONPATH=str(work / "src"),
                   ROBUSTLAB_DATA=os.environ.get("ROBUSTLAB_DATA", "/work/shared/data"))
        r = subprocess.run([_python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", *ISSUE15_TESTS], cwd=work,
                           env=env, capture_output=True, text=True)
        failing = [line.split(" - ")[0].removeprefix("FAILED ") for line in r.stdout.splitlines()
                   if line.startswith("FAILED")]
        out.append({"mutation": name, "file": path, "caught": r.returncode != 0, "failing_tests": failing})
        print(f"{name}: {'caught' if r.returncode else 'NOT CAUGHT'} by {len(failing)} tests", flush=True)
    return out


def write_markdown(data: dict) -> None:
    lines = ["# Mutation testing", "", f"Updated {data['updated']}; command: `{data['command']}`.", "",
             "Machine: 2 CPU cores shared with other engineers' jobs (load average often > 10), so wall "
             "times are indicative only.", ""]
    if data.get("modules"):
        lines += ["Score = killed (timeouts included) / checked mutants; survivors and mutants no selected test "
                  "reaches count against it. Equivalent = survivors read and judged equivalent (`EQUIVALENT` in "
                  "`benchmarks/mutation.py`, reasons in `mutation.json`); the last score leaves them out.", "",
                  "| module | tests | mutants | checked | killed | survived | no tests | equivalent | score | "
                  "score without equivalent | wall | command |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in data["modules"].items():
            c = m["counts"]
            score = "n/a" if m["score"] is None else f"{m['score']:.1%}"
            tests = ", ".join(t.removeprefix("tests/") for t in m["tests"])
            file = m["file"] + (f" ({', '.join(m['functions'])} only)" if m.get("functions") else "")
            if m.get("score_after_recheck") is not None:
                score += f" ({m['score_after_recheck']:.1%} with the tests added since)"
            without = m.get("score_without_equivalent")
            lines.append(f"| {file} | {tests} | {m['mutants']} | {m.get('checked', m['mutants'])} | {m['killed']} | "
                         f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {m.get('equivalent', 0)} | {score} | "
                         f"{'n/a' if without is None else f'{without:.1%}'} | {m.get('wall_s')} s | "
                         f"`{m.get('command', data['command'])}` |")
        lines.append("")
    if data.get("notes"):
        lines += ["## Survivors and what was not run", "", data["notes"], ""]
    (RESULTS / "mutation.md").write_text("\n".join(lines))


def write_issue15(results: list[dict]) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    data = {"updated": when, "command": "python benchmarks/mutation.py --issue15", "tests": ISSUE15_TESTS,
            "mutations": results}
    (RESULTS / "mutation_issue15.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = ["# Issue 15's mutations", "", f"Updated {when}; command: `{data['command']}`; tests run: "
             f"{', '.join(ISSUE15_TESTS)}.", "", "| mutation | caught | failing tests |", "|---|---|---|"]
    for m in results:
        tests = ", ".join(t.split("::")[-1] for t in m.get("failing_tests", []))
        lines.append(f"| {m['mutation']} | {m.get('caught', m.get('error'))} | {tests} |")
    (RESULTS / "mutation_issue15.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", choices=[[], *MODULES], help="modules to mutate (default: all)")
    parser.add_argument("--issue15", action="store_true", help="run only the six mutations of issue 15")
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run of the modules")
    parser.add_argument("--recheck-deselect", metavar="EXPR",
                        help="with --recheck: a -k expression of tests to leave out (tests of a later source change)")
    parser.add_argument("--recheck-only", nargs="+", metavar="TEST",
                        help="with --recheck: run only these test files (those written since the run; faster)")
    parser.add_argument("--mark", action="store_true",
                        help="only mark the recorded survivors again from EQUIVALENT and NEEDS_GPU (added since)")
    parser.add_argument("--recheck-jobs", type=int, default=1, help="with --recheck: parallel workers")
    parser.add_argument("--recheck-skip", nargs="+", metavar="NAME",
                        help="with --recheck: leave out the survivors of these functions (run with --functions instead)")
    parser.add_argument("--recheck", action="store_true",
                        help="run the recorded survivors again against the current tests (with --collect: the "
                             "survivors collected again)")
    parser.add_argument("--functions", nargs="+", metavar="NAME",
                        help="only the mutants of these functions (f or Class.method) of the one module named")
    parser.add_argument("--collect", action="store_true",
                        help="only record the results of earlier (possibly interrupted) runs of the modules")
    args = parser.parse_args(argv)
    if args.functions and len(args.modules) != 1:
        parser.error("--functions needs exactly one module")
    if args.issue15:
        write_issue15(run_issue15())
        return 0
    out_json = RESULTS / "mutation.json"
    command = "python benchmarks/mutation.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def load() -> dict:
        return json.loads(out_json.read_text()) if out_json.exists() else {"modules": {}}

    for name in args.modules or list(MODULES):
        print(f"mutating {MODULES[name][0]} ...", flush=True)
        key = name if not args.functions else f"{name}:{','.join(args.functions)}"
        if args.mark or (args.recheck and not args.collect):
            result = load()["modules"][key]
            mark(result)
            if args.recheck:
                recheck(name, result, args.functions, args.recheck_deselect, args.recheck_only, args.recheck_jobs,
                        args.recheck_skip)
        elif args.collect:
            earlier = load()["modules"].get(key, {})
            result = collect(name, args.functions)
            result["tests"] = earlier.get("tests", result["tests"])  # the selection the run used
            result["wall_s"] = earlier.get("wall_s")
            result["command"] = earlier.get("command", "?") + " (collected again)"
            result["interrupted"] = result["checked"] < result["mutants"]
            if args.recheck:
                recheck(name, result, args.functions, args.recheck_deselect, args.recheck_only, args.recheck_jobs,
                        args.recheck_skip)
        else:
            result = run_module(name, args.max_children, resume=args.resume, functions=args.functions)
        result.setdefault("command", command)
        # Read the file again: another run (of another module) may have written it meanwhile.
        data = load()
        data["modules"][key] = result
        data["command"] = command
        data["updated"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        out_json.write_text(json.dumps(data, indent=1) + "\n")
        write_markdown(data)
        print(f"  {result['killed']}/{result['mutants']} killed, {result['counts']}", flush=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
