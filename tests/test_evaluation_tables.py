"""The evaluation modes against hand-computed tables, without a trained model (issue 15).

A scripted attack on a model whose logits are its inputs' features: each sample's id is its
feature 0, and the attack raises one logit of a scripted sample by a scripted amount, so every
distance, success, credit, per-sample pass count and call seed is known in advance. Small and
fast: this is the selection the mutation runs of the runner, the minimum-norm evaluation and the
targeted protocol use (``benchmarks/mutation.py``).
"""

from __future__ import annotations

import fractions
import inspect
import json
import logging
import math
import pickle
import re
import time
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from robustlab.attacks import Attack
from robustlab.errors import DistanceMismatchWarning, RobustlabError
from robustlab.evaluation import (
    BEST,
    CLEAN,
    MinimumNormEvaluation,
    TargetedEvaluation,
    evaluate,
    evaluate_minimum_norm,
    evaluate_targeted,
)
from robustlab.evaluation import runner as runner_module
from robustlab.evaluation.runner import block_seed
from robustlab.settings import RunSettings
from robustlab.threat import L2, Linf

pytestmark = pytest.mark.usefixtures("single_thread")

THREAT = L2(math.inf, bounds=(-10.0, 10.0))
CALLS: list[tuple] = []  # (tag, ids, targets, seed) of every attack call, in order
CRASH: dict[str, tuple] = {}  # "at": (tag, first id) of the call that raises Interrupted


class Interrupted(Exception):
    """Stands in for a kill: raised from inside an attack."""


@pytest.fixture(autouse=True)
def _fresh_log():
    CALLS.clear()
    CRASH.clear()
    yield
    CALLS.clear()
    CRASH.clear()


class _Logits(nn.Module):
    """The model: its logits are features 1..K of the input (feature 0 is the sample's id)."""

    def forward(self, x):
        return x[:, 1:] * 1.0


@dataclass(frozen=True, kw_only=True)
class _Script(Attack):
    """Raises logit ``cls`` of sample ``id`` by ``amount`` for each ``(id, cls, amount)`` of ``moves``
    (L2 distance ``amount``; a sample's own logit is 2 and the others 1, so it breaks iff
    ``amount > 1``). Targeted, a move applies only towards its own class. Reports the honest best
    distance unless ``lies`` gives another, and spends ``spend`` forwards and backwards on the
    call's first sample."""

    name = "script"
    norms = frozenset({"L2", "Linf"})
    minimum_norm = True
    tag: str = ""
    moves: tuple[tuple[int, int, float], ...] = ()
    lies: tuple[tuple[int, float], ...] = ()
    spend: int = 0

    def _run(self, oracle, x, y, *, threat, targets, generator):
        ids = [round(float(v)) for v in x[:, 0]]
        CALLS.append((self.tag, ids, None if targets is None else targets.tolist(), generator.initial_seed()))
        if CRASH.get("at") == (self.tag, ids[0]):
            raise Interrupted
        for _ in range(self.spend):
            oracle.loss_and_grad(x[:1], lambda z: z.sum(1))
        x_adv, best = x.clone(), []
        lies = dict(self.lies)
        for row, i in enumerate(ids):
            found = math.inf
            for sample, cls, amount in self.moves:
                if sample == i and (targets is None or int(targets[row]) == cls):
                    x_adv[row, 1 + cls] += amount
                    found = amount if amount > 1 else math.inf
            best.append(lies.get(i, found))
        return x_adv, {"best_distance": torch.tensor(best, dtype=x.dtype)}


def _data():
    """7 samples of 3 classes; sample 5 (label 2) is predicted 0 clean."""
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    x = torch.ones(7, 4)
    x[:, 0] = torch.arange(7).float()
    x[torch.arange(7), 1 + y] = 2.0
    x[5, 1] = 3.0
    return x, y


# Untargeted, each sample's scripted class is (y + 1) % 3.
_A = _Script(tag="A", spend=1, moves=((0, 1, 1.5), (1, 2, 3.0), (2, 0, 0.5), (3, 1, 2.0), (4, 2, 0.5), (6, 1, 3.125)))
# B lies about sample 2 (a failure reported as found: flipped, one forward to check it), sample 4 (a
# wrong finite distance) and sample 6 (raised to an exact tie of the top two logits: forgiven).
_B = _Script(tag="B", moves=((0, 1, 2.5), (1, 2, 1.25), (2, 0, 0.5), (3, 1, 2.0), (4, 2, 1.75), (6, 1, 1.0)),
             lies=((2, 0.5), (4, 1.0), (6, 1.0)))


def _minimum_norm(**kwargs):
    x, y = _data()
    kwargs.setdefault("settings", RunSettings(seed=7, batch_size=3))
    with pytest.warns(DistanceMismatchWarning, match=r"^B: for 2 of 6 samples the attack's own best_distance disagrees "
                      r"with the verified distance .* See `robustlab docs diagnostics#distance-mismatch`$") as record:
        ev = evaluate_minimum_norm(_Logits(), x, y, attacks={"A": _A, "B": _B}, threat=THREAT, **kwargs)
    assert len(record) == 1
    return ev


INF = math.inf
# Per sample: verified distance of A and of B, best, the attack credited, forwards, backwards.
_TABLE = [
    (1.5, 2.5, 1.5, "A", 6, 1),  # block 0: A's call spends 7 forwards and 1 backward: shares 3, 2, 2 and 1, 0, 0
    (3.0, 1.25, 1.25, "B", 5, 0),
    (INF, INF, INF, None, 6, 0),  # + the forward that checks B's flipped report
    (2.0, 2.0, 2.0, "A", 6, 1),  # block 1: a tie goes to the first attack in order
    (INF, 1.75, 1.75, "B", 5, 0),
    (0.0, 0.0, 0.0, CLEAN, 1, 0),  # misclassified: only its clean forward
    (3.125, INF, 3.125, "A", 7, 1),  # block 2: + the forward that checks B's tie
]


def test_minimum_norm_table_credits_costs_and_seeds_by_hand(caplog):
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="robustlab"):
        ev = _minimum_norm()
    assert not [r for r in caplog.records if r.name == "robustlab"]  # no progress unless asked for
    assert 0 < ev.provenance["wall_time_s"] <= time.perf_counter() - start + 0.001
    assert [s["attacks"]["A"]["distance"] for s in ev.samples] == [r[0] for r in _TABLE]
    assert [s["attacks"]["B"]["distance"] for s in ev.samples] == [r[1] for r in _TABLE]
    assert [s["distance"] for s in ev.samples] == [r[2] for r in _TABLE]
    assert [s["best_attack"] for s in ev.samples] == [r[3] for r in _TABLE]
    assert [(s["forwards"], s["backwards"]) for s in ev.samples] == [(r[4], r[5]) for r in _TABLE]
    assert [s["clean_prediction"] for s in ev.samples] == [0, 1, 2, 0, 1, 0, 0]
    assert [s["index"] for s in ev.samples] == list(range(7)) and [s["label"] for s in ev.samples] == _data()[1].tolist()
    # Reported distances and their cross-check; a clean error has no attack entries beyond its 0.
    assert ev.samples[5]["attacks"] == {"A": {"distance": 0.0}, "B": {"distance": 0.0}}
    assert [s["attacks"]["B"].get("reported") for s in ev.samples] == [2.5, 1.25, 0.5, 2.0, 1.0, None, 1.0]
    assert [s["attacks"]["B"].get("mismatch") for s in ev.samples] == [False, False, True, False, True, None, False]
    assert [s["attacks"]["A"].get("mismatch") for s in ev.samples] == [False] * 5 + [None, False]
    assert [s["attacks"]["A"].get("reported") for s in ev.samples] == [1.5, 3.0, INF, 2.0, INF, None, 3.125]
    # Costs: 7 clean forwards; A 7 + 5 + 3 forwards and one backward per call; B 6 + 4 + 2 and two checks.
    assert ev.passes == {"forwards": 36, "backwards": 3,
                         "clean": {"forwards": 7, "backwards": 0, "samples": 7, "calls": 3},
                         "steps": {"A": {"forwards": 15, "backwards": 3, "samples": 6, "calls": 3},
                                   "B": {"forwards": 14, "backwards": 0, "samples": 6, "calls": 3}}}
    assert ev.cost == {"A": {"forwards": 15, "backwards": 3, "samples": 6},
                       "B": {"forwards": 14, "backwards": 0, "samples": 6}}
    # Each (step, block) call gets its own generator, seeded from the seed, the step and the block's first position.
    assert CALLS == [(tag, ids, None, block_seed(7, tag, ids[0]))
                     for ids in ([0, 1, 2], [3, 4], [6]) for tag in ("A", "B")]
    assert ev.provenance["seed"] == 7 and ev.provenance["processes"] == 1 and ev.provenance["wall_time_s"] >= 0


def test_block_seeds_are_stable_across_versions():
    # Golden values: a change of the seeding changes every recorded result of every evaluation.
    assert block_seed(0, "apgd-ce", 0) == block_seed(0, "apgd-ce", 0)
    assert [block_seed(s, k, b) for s, k, b in [(0, "apgd-ce", 0), (1, "apgd-ce", 0), (0, "square", 256),
                                                (5, "random-target", 0)]] == GOLDEN_SEEDS


GOLDEN_SEEDS = [8698018690463289278, 3233760116296091008, 1363530960407957188, 8916748867944474310]


def test_minimum_norm_statistics_curve_and_fixed_eps_by_hand():
    ev = _minimum_norm()
    m = ev.metrics
    assert m["samples"] == 7 and m["norm"] == "L2" and m["clean_accuracy"]["count"] == 6
    assert m["best_attack"] == {"A": 3, "B": 2}
    assert m["reported_distance_mismatches"] == {"A": 0, "B": 2}
    # Correct samples' distances: best [1.25, 1.5, 1.75, 2, 3.125, inf], A [1.5, 2, 3, 3.125, inf, inf],
    # B [1.25, 1.75, 2, 2.5, inf, inf]; the median counts failures as inf, the others only the successes.
    assert m["distance"] == {
        BEST: {"attacked": 6, "successes": 5, "success_rate": 5 / 6, "median": 1.875, "median_successful": 1.75,
               "mean_successful": 1.925},
        "A": {"attacked": 6, "successes": 4, "success_rate": 4 / 6, "median": 3.0625, "median_successful": 2.5,
              "mean_successful": 2.40625},
        "B": {"attacked": 6, "successes": 4, "success_rate": 4 / 6, "median": 2.25, "median_successful": 1.875,
              "mean_successful": 1.875},
    }
    # Broken at eps: distance <= eps (an exact tie breaks), never a failure, even at eps = inf.
    at = {0: 6, 1.0: 6, 1.25: 5, 1.5: 4, 1.75: 3, 2.0: 2, 3.125: 1, 100: 1, INF: 1}
    assert {e: ev.robust_accuracy_at(e) * 7 for e in at} == pytest.approx(at)
    assert ev.robust_accuracy_at(2.0, "A") * 7 == pytest.approx(4)
    assert ev.robust_accuracy_at(INF, "B") * 7 == pytest.approx(2)
    curve = ev.curve([0, 1.5, INF])
    assert curve["eps"] == [0, 1.5, INF]
    assert {k: [round(v * 7) for v in r] for k, r in curve["robust_accuracy"].items()} == \
        {"A": [6, 5, 2], "B": [6, 5, 2], BEST: [6, 4, 1]}
    assert ev.curve(torch.tensor([0.0, 2.0]))["robust_accuracy"][BEST] == pytest.approx([6 / 7, 2 / 7])
    # The default grid: 9 points from 0 to the largest best distance (3.125) rounded up to 3 digits.
    assert ev.default_eps_grid() == [0.0, 0.391, 0.782, 1.17, 1.56, 1.96, 2.35, 2.74, 3.13]
    assert ev.default_eps_grid(points=3) == [0.0, 1.56, 3.13] and ev.default_eps_grid(points=1) == [0.0]
    assert ev.curve()["eps"] == ev.default_eps_grid()
    # The fixed-eps evaluation it implies: the first attack in order whose distance is <= eps.
    for eps, credited, robust in [(1.5, ["A", "B", None, None, None, CLEAN, None], 4),
                                  (2.0, ["A", "B", None, "A", "B", CLEAN, None], 2)]:
        fixed = ev.at(eps)
        assert [s["broken_by"] for s in fixed.samples] == credited
        assert fixed.metrics["robust_accuracy"]["count"] == robust and fixed.threat.eps == eps
    fixed = ev.at(2.0)
    assert [s["distance"] for s in fixed.samples] == [1.5, 1.25, INF, 2.0, 1.75, 0.0, INF]
    assert fixed.samples[0]["attacks"] == {"A": {"success": True, "distance": 1.5}, "B": {"success": False, "distance": None}}
    assert fixed.samples[5]["attacks"]["A"] == {"success": None, "distance": None}
    assert [s["forwards"] for s in fixed.samples] == [r[4] for r in _TABLE] and fixed.passes == ev.passes
    with pytest.raises(RobustlabError, match="eps must be > 0"):
        ev.at(0)
    for bad in (-1.0, math.nan, "1"):
        with pytest.raises(RobustlabError, match="eps must be a number >= 0"):
            ev.robust_accuracy_at(bad)
    with pytest.raises(RobustlabError, match="unknown attack 'C'"):
        ev.distances("C")


def test_fixed_eps_evaluation_keeps_every_field():
    ev = _minimum_norm(model_card={"architecture": "logits"}, indices=torch.arange(7) + 40)
    assert ev.model_card == {"architecture": "logits"} and [s["index"] for s in ev.samples] == list(range(40, 47))
    fixed = ev.at(2.0)
    assert fixed.samples[4] == {"index": 44, "label": 1, "clean_prediction": 1, "broken_by": "B", "distance": 1.75,
                                "attacks": {"A": {"success": False, "distance": None},
                                            "B": {"success": True, "distance": 1.75}},
                                "forwards": 5, "backwards": 0}
    assert fixed.samples[3]["backwards"] == 1
    assert fixed.samples[5] == {"index": 45, "label": 2, "clean_prediction": 0, "broken_by": CLEAN, "distance": 0.0,
                                "attacks": {"A": {"success": None, "distance": None},
                                            "B": {"success": None, "distance": None}},
                                "forwards": 1, "backwards": 0}
    assert fixed.provenance == ev.provenance and fixed.provenance["seed"] == 7
    assert fixed.model_card == ev.model_card and fixed.attacks == ev.attacks == {"A": _A.config(), "B": _B.config()}


def _table(*rows):
    """A minimum-norm evaluation of one attack "A" from ``(label, clean prediction, distance)`` rows."""
    samples = [{"index": i, "label": label, "clean_prediction": p, "distance": 0.0 if p != label else d,
                "best_attack": CLEAN if p != label else ("A" if math.isfinite(d) else None),
                "attacks": {"A": {"distance": 0.0 if p != label else d}}} for i, (label, p, d) in enumerate(rows)]
    return MinimumNormEvaluation(threat=THREAT, attacks={"A": {}}, samples=samples)


def test_minimum_norm_grid_and_queries_at_the_edges():
    small = _table((0, 0, 0.25), (0, 0, 0.5), (1, 0, 0.0), (0, 0, INF))
    assert small.default_eps_grid(points=2) == [0.0, 0.5]
    assert small.default_eps_grid(points=5) == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert small.default_eps_grid(points=3) == [0.0, 0.25, 0.5]
    # Rounded up to 3 significant digits, never below the largest distance.
    assert _table((0, 0, 1.2301)).default_eps_grid(points=2) == [0.0, 1.24]
    assert _table((0, 0, 0.0123)).default_eps_grid(points=2) == [0.0, 0.0123]
    assert _table((0, 0, 987.61)).default_eps_grid(points=3) == [0.0, 494.0, 988.0]
    # Only clean errors and failures: nothing to span.
    assert _table((1, 0, 0.0), (0, 0, INF)).default_eps_grid() == [0.0]
    assert small.at(1.0).metrics["robust_accuracy"]["count"] == 1 and small.at(0.25).metrics["robust_accuracy"]["count"] == 2
    with pytest.raises(RobustlabError, match=r"^eps must be > 0 for a fixed-eps Evaluation \(robust_accuracy_at\(0\)"):
        small.at(0.0)
    with pytest.raises(RobustlabError, match=r"^eps must be a number >= 0, got -1.0$"):
        small.curve([0.5, -1])
    empty = _table()
    assert empty.default_eps_grid() == [0.0] and math.isnan(empty.robust_accuracy_at(0.5))
    curve = empty.curve([0.0, 1.0])
    assert curve["eps"] == [0.0, 1.0] and all(math.isnan(v) for r in curve["robust_accuracy"].values() for v in r)
    stats = empty.distance_statistics()
    assert stats["attacked"] == stats["successes"] == 0
    assert all(math.isnan(stats[k]) for k in ("success_rate", "median", "median_successful", "mean_successful"))
    assert math.isnan(empty.metrics["clean_accuracy"]["value"]) and empty.metrics["best_attack"] == {"A": 0}


def test_minimum_norm_json_round_trip_by_hand(tmp_path):
    ev = _minimum_norm()
    path = ev.save(tmp_path / "mn.json")
    data = json.loads(path.read_text())
    assert data["kind"] == "minimum-norm" and data["samples"][2]["distance"] is None
    assert data["metrics"] == json.loads(json.dumps(ev.metrics)) and data["model_card"] is None
    assert data["samples"][4]["attacks"]["A"] == {"distance": None, "reported": None, "mismatch": False}
    loaded = MinimumNormEvaluation.load(path)
    assert loaded.samples == ev.samples and loaded.passes == ev.passes and loaded.cost == ev.cost
    assert loaded.threat == ev.threat and loaded.metrics == ev.metrics


def test_minimum_norm_refuses_what_it_cannot_evaluate():
    x, y = _data()
    with pytest.raises(RobustlabError, match="'best' is reserved"):
        evaluate_minimum_norm(_Logits(), x, y, attacks={BEST: _A}, threat=THREAT)
    with pytest.raises(RobustlabError, match=r"^'F' \(_Fixed\) is a fixed-budget attack, not a minimum-norm one: "
                                             r".*\(C&W, DeepFool, FMN, DDN, FAB, JSMA\) here, or evaluate\(\) at a fixed eps$"):
        evaluate_minimum_norm(_Logits(), x, y, attacks={"F": _Fixed()}, threat=THREAT)
    with pytest.raises(RobustlabError, match="^evaluate_minimum_norm measures each sample.s minimal distance"):
        evaluate_minimum_norm(_Logits(), x, y, attacks={"A": _A}, threat=L2(1.0))
    with pytest.raises(RobustlabError, match="num_classes is 4"):
        evaluate_minimum_norm(_Logits(), x, y, attacks={"A": _A}, threat=THREAT, num_classes=4)
    with pytest.raises(RobustlabError, match=r"^'A' \(_Script\) supports the norms \['L2', 'Linf'\], not L1$"):
        evaluate_minimum_norm(_Logits(), x, y, attacks={"A": _A}, threat=_L1())
    with pytest.raises(RobustlabError, match=r"^'A' is not a robustlab Attack \(got object\)$"):
        evaluate_minimum_norm(_Logits(), x, y, attacks={"A": object()}, threat=THREAT)


@dataclass(frozen=True, kw_only=True)
class _Fixed(_Script):
    minimum_norm = False


def _L1():
    from robustlab.threat import L1

    return L1(math.inf, bounds=(-10.0, 10.0))


# -- resuming and sharding ---------------------------------------------------------------------


def _comparable(ev) -> dict:
    d = json.loads(json.dumps(ev.to_dict()))
    d.pop("provenance")
    return d


def test_killed_run_resumes_at_its_first_unfinished_step(tmp_path, caplog, monkeypatch):
    full = _minimum_norm()
    bars = []

    def progress_bar(**kwargs):
        bars.append(kwargs)
        return real_bar(**kwargs)

    real_bar = runner_module.progress_bar
    monkeypatch.setattr(runner_module, "progress_bar", progress_bar)
    every_call = list(CALLS)
    CALLS.clear()
    state = tmp_path / "state.json"
    CRASH["at"] = ("B", 3)  # B's call on block 1
    with pytest.raises(Interrupted), caplog.at_level(logging.INFO, logger="robustlab"):
        evaluate_minimum_norm(_Logits(), *_data(), attacks={"A": _A, "B": _B}, threat=THREAT,
                              settings=RunSettings(seed=7, batch_size=3, progress=True), state_file=state)
    saved = json.loads(state.read_text())
    assert saved["steps"] == [3, 2, 1] and saved["step_keys"] == ["A", "B"] and saved["shard"] == [0, 7]
    assert saved["wall_time_s"] > 0
    assert saved["fingerprint"]["settings"] == {"mode": "minimum-norm", "seed": 7, "batch_size": 3, "cascade": False}
    assert saved["results"]["A"]["reported"][4] == "inf"  # strict JSON
    state.write_text(json.dumps({**saved, "wall_time_s": 1000.0}))  # as if the killed session had run long
    CALLS.clear()
    CRASH.clear()
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="robustlab"):
        resumed = _minimum_norm(state_file=state, settings=RunSettings(seed=7, batch_size=3, progress=True))
    # The wall time adds this session's to the killed one's.
    assert 1000 < resumed.provenance["wall_time_s"] <= 1000 + time.perf_counter() - start + 0.01
    # Progress (off a terminal, a line per stage; on one, a bar that goes when done) counts sample-steps:
    # 9 of 14 done when killed, resumed from there.
    assert bars == [dict(total=14, desc="minimum-norm", unit="sample", disable=False, leave=False, initial=0),
                    dict(total=14, desc="minimum-norm", unit="sample", disable=False, leave=False, initial=9)]
    lines = [r.getMessage() for r in caplog.records if r.name == "robustlab"]
    assert [re.sub(r"in [0-9.]+ s", "in T s", line) for line in lines] == \
        ["minimum-norm: 9/14 sample in T s (step=B)", "minimum-norm: 14/14 sample in T s (step=B)"]
    assert CALLS == every_call[3:]  # B on block 1, then block 2: the same calls with the same seeds
    assert _comparable(resumed) == _comparable(full)
    CALLS.clear()
    assert _comparable(_minimum_norm(state_file=state)) == _comparable(full) and CALLS == []
    assert json.loads(state.read_text())["fingerprint"]["settings"]["mode"] == "minimum-norm"
    assert _comparable(_minimum_norm(state_file=state, resume=False)) == _comparable(full) and CALLS == every_call
    run = dict(attacks={"A": _A, "B": _B}, threat=THREAT, state_file=state)
    with pytest.raises(RobustlabError, match=r"belongs to another evaluation \(different model, settings\); delete it, "
                                             r"give another state file, or start afresh \(resume=False; CLI: --no-resume\)$"):
        evaluate_minimum_norm(_Probabilities(), *_data(), settings=RunSettings(seed=8, batch_size=3), **run)
    # A document of another kind given as the state file.
    other = _minimum_norm().save(tmp_path / "evaluation.json")
    with pytest.raises(RobustlabError, match=r"is not a resumable state of an evaluation run .*kind=.minimum-norm"):
        evaluate_minimum_norm(_Logits(), *_data(), settings=RunSettings(seed=7, batch_size=3),
                              **{**run, "state_file": other})
    data = json.loads(state.read_text())
    state.write_text(json.dumps({**data, "shard": [0, 6]}))
    with pytest.raises(RobustlabError, match=r"belongs to another evaluation \(different shard \(samples 0:6, not 0:7\)\)"):
        evaluate_minimum_norm(_Logits(), *_data(), settings=RunSettings(seed=7, batch_size=3), **run)
    state.write_text(json.dumps({**data, "step_keys": ["B", "A"]}))
    with pytest.raises(RobustlabError, match=r"lists the steps \['B', 'A'\], not \['A', 'B'\]: start afresh$"):
        evaluate_minimum_norm(_Logits(), *_data(), settings=RunSettings(seed=7, batch_size=3), **run)
    data["version"] = 1
    state.write_text(json.dumps(data))
    with pytest.raises(RobustlabError, match="state format version 1"):
        evaluate_minimum_norm(_Logits(), *_data(), settings=RunSettings(seed=7, batch_size=3), **run)


@pytest.mark.filterwarnings("ignore::robustlab.errors.DistanceMismatchWarning")  # raised in the ranks' threads
def test_sharded_run_gives_the_single_process_table_with_the_same_seeds(tmp_path, monkeypatch):
    from test_evaluation_runner import FakeGroup

    full = _minimum_norm()
    single_calls = sorted(CALLS)
    CALLS.clear()
    group = FakeGroup(2)
    monkeypatch.setattr(runner_module, "rank_and_world", group.rank_and_world)
    monkeypatch.setattr(runner_module, "all_gather", group.all_gather)
    results = group.run(lambda rank: evaluate_minimum_norm(
        _Logits(), *_data(), attacks={"A": _A, "B": _B}, threat=THREAT, distributed=True,
        settings=RunSettings(seed=7, batch_size=3), state_file=tmp_path / "state.json"))
    for ev in results:
        assert _comparable(ev) == _comparable(full) and ev.provenance["processes"] == 2
    assert sorted(CALLS) == single_calls
    states = [json.loads((tmp_path / f"state.rank{r}-of-2.json").read_text()) for r in range(2)]
    assert [state["shard"] for state in states] == [[0, 6], [6, 7]]
    # Each rank's state holds its own shard's samples only.
    assert [len(state["results"]["B"]["distance"]) for state in states] == [6, 1]


def test_the_merged_table_of_three_shards_is_the_single_process_table(monkeypatch):
    from test_evaluation_runner import FakeGroup

    from robustlab.evaluation.runner import Step, Table, run_blocks

    x, y = _data()
    steps = lambda k: [Step("A", _A), Step("B", _B)]  # noqa: E731
    options = dict(threat=THREAT, attacks={"A": _A, "B": _B}, steps=steps, mode="minimum-norm", verify=True,
                   settings=RunSettings(seed=7, batch_size=3))
    single = run_blocks(_Logits(), x, y, **options).table
    group = FakeGroup(3)
    monkeypatch.setattr(runner_module, "rank_and_world", group.rank_and_world)
    monkeypatch.setattr(runner_module, "all_gather", group.all_gather)
    runs = group.run(lambda rank: run_blocks(_Logits(), x, y, distributed=True, **options))
    for run in runs:
        merged = run.table
        assert (merged.start, merged.stop, merged.done, merged.num_classes) == (0, 7, [3, 3, 3], 3)
        assert merged.steps == ["A", "B"] and merged.results == single.results
        assert (merged.forwards, merged.backwards) == (single.forwards, single.backwards)
        assert merged.passes == single.passes and merged.clean_prediction == single.clean_prediction
        assert merged.wall_time > 0 and run.processes == 3 and run.labels == y.tolist()  # wall time: the slowest shard's
    # No samples: no rank learns a number of classes, and the merged table is empty.
    empty = group.run(lambda rank: run_blocks(_Logits(), x[:0], y[:0], distributed=True, **options))
    assert [(run.table.num_classes, run.table.stop, run.labels) for run in empty] == [(None, 0, [])] * 3
    other = Table.fresh(3, 6, 3)
    other.set_steps(["A"])
    with pytest.raises(RobustlabError, match=r"^the shards ran different steps: \['A'\] and \['A', 'B'\]$"):
        Table.concat([single, other])


def test_cross_check_forgives_only_near_ties_of_the_top_two_logits():
    from robustlab.attacks import AttackResult
    from robustlab.evaluation.runner import cross_check

    # Rows: [id, logits...]; the tolerance is 1e-4 of the top logit's magnitude, at least 1e-4.
    x_adv = torch.tensor([[0, 2.0, 2.0 - 1.5e-4, 0.0],  # gap 1.5e-4 <= 2e-4: a tie
                          [1, 1.0, 1.0 - 1.5e-4, 0.0],  # gap 1.5e-4 > 1e-4: not a tie
                          [2, -3.0, -3.0 - 2.5e-4, -5.0],  # gap 2.5e-4 <= 3e-4 (|top|): a tie
                          [3, 0.5, 0.5 - 1.5e-4, 0.0],  # |top| < 1: tolerance 1e-4, not a tie
                          [4, 2.0, 1.0, 0.0],  # finite both ways
                          [5, 2.0, 1.0, 0.0],
                          [6, 2.0, 1.0, 0.0],
                          [7, 2.0, 1.0, 0.0],
                          # the top logit's magnitude, not the runner-up's: 1.00005e-4 >= gap 1.00003e-4 > 1e-4
                          [8, 1.0 + 5e-5, 1.0 + 5e-5 - 1.00003e-4, 0.0]], dtype=torch.float64)
    n = len(x_adv)
    result = AttackResult(x_adv=x_adv, success=torch.tensor([False, True, False, True, True, True, True, True, False]),
                          distance=torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 0.5, 0.5, 1.0], dtype=torch.float64),
                          loss=torch.zeros(n), predictions=torch.zeros(n, dtype=torch.long))
    # Reported: finite for the failures, inf for the successes (flipped); then 2 within 1e-4 * 2 of
    # 2.00015 (agrees), 2.0005 (disagrees), and for 0.5 the tolerance is 1e-4: 0.50015 disagrees, 0.50005 agrees.
    flags, checked = cross_check(_Logits(), result, [1.0, INF, 1.0, INF, 2.00015, 2.0005, 0.50015, 0.50005, 1.0])
    assert flags == [False, True, False, True, False, True, True, False, False]
    assert checked == [0, 1, 2, 3, 8]  # a forward only for the flipped rows


# -- the fixed-eps cascade ---------------------------------------------------------------------


def test_cascade_attacks_only_what_no_earlier_step_broke():
    x, y = _data()
    threat = Linf(eps=5.0, bounds=(-10.0, 10.0))
    ev = evaluate(_Logits(), x, y, threat=threat, attacks={"A": _A, "B": _B}, cascade=True,
                  settings=RunSettings(seed=2, batch_size=3))
    assert [s["broken_by"] for s in ev.samples] == ["A", "A", None, "A", "B", CLEAN, "A"]
    # B sees only A's survivors: sample 2 of block 0, sample 4 of block 1; none of block 2.
    assert CALLS == [("A", [0, 1, 2], None, block_seed(2, "A", 0)), ("B", [2], None, block_seed(2, "B", 0)),
                     ("A", [3, 4], None, block_seed(2, "A", 3)), ("B", [4], None, block_seed(2, "B", 3)),
                     ("A", [6], None, block_seed(2, "A", 6))]
    assert [(s["forwards"], s["backwards"]) for s in ev.samples] == [(4, 1), (3, 0), (5, 0), (4, 1), (5, 0), (1, 0),
                                                                   (4, 1)]
    assert ev.passes["steps"]["B"] == {"forwards": 4, "backwards": 0, "samples": 2, "calls": 2}
    assert ev.passes["forwards"] == 7 + 15 + 4


@dataclass(frozen=True, kw_only=True)
class _Warm(_Script):
    """Records the start points it is given (features 1..K of each row; None without)."""

    takes_start = True
    warm_start: bool = True

    def _run(self, oracle, x, y, *, threat, targets, generator, start=None):
        x_adv, extras = super()._run(oracle, x, y, threat=threat, targets=targets, generator=generator)
        STARTS.append(None if start is None else start[:, 1:].tolist())
        return x_adv, extras


STARTS: list = []


def test_a_warm_step_starts_from_the_earlier_steps_nearest_points(tmp_path):
    """In a cascade, the warm step gets per sample the point of the earlier steps with the smallest
    margin (the clean point if none moved it): here A's for sample 0, B's for sample 1."""
    STARTS.clear()
    x, y = _data()
    # Margins after A: 0.25, 0.75, sample 2 broken, 0.5 for sample 3; after B: 0.5, 0.5, and 0.5 again for
    # sample 3, a tie that keeps the earlier point (the first in order, as for credits).
    near_a = _Script(tag="A", moves=((0, 1, 0.75), (1, 2, 0.25), (2, 0, 3.0), (3, 1, 0.5)))
    near_b = _Script(tag="B", moves=((0, 1, 0.5), (1, 2, 0.5), (3, 2, 0.5)))
    warm = _Warm(tag="W", moves=((4, 2, 1.5),))
    threat = Linf(eps=5.0, bounds=(-10.0, 10.0))
    run = dict(threat=threat, attacks={"A": near_a, "B": near_b, "W": warm}, settings=RunSettings(seed=1, batch_size=3))
    ev = evaluate(_Logits(), x, y, cascade=True, **run)
    assert [s["broken_by"] for s in ev.samples] == [None, None, "A", None, "W", CLEAN, None]
    expected = [[[2.0, 1.75, 1.0], [1.0, 2.0, 1.5]], [[2.0, 1.5, 1.0], [1.0, 2.0, 1.0]], [[2.0, 1.0, 1.0]]]
    assert STARTS == expected
    # Killed during W's call on block 1 and resumed: that block's points come back from their file.
    STARTS.clear()
    CALLS.clear()
    CRASH["at"] = ("W", 3)
    state = tmp_path / "state.json"
    with pytest.raises(Interrupted):
        evaluate(_Logits(), x, y, cascade=True, state_file=state, **run)
    assert json.loads(state.read_text())["points_file"] == "state.json.points-1-2.pt"
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["state.json.points-1-2.pt"]  # the earlier ones removed
    CRASH.clear()
    # The points file missing, or holding other points: refused, not silently restarted from the clean points.
    points = tmp_path / "state.json.points-1-2.pt"
    saved_points = points.read_bytes()
    points.unlink()
    with pytest.raises(RobustlabError, match=r"lacks the warm-start points of block 1 after step 2 "
                                             r"\(state.json.points-1-2.pt\): start afresh"):
        evaluate(_Logits(), x, y, cascade=True, state_file=state, **run)
    torch.save({"x": torch.zeros(2, 4), "margin": torch.zeros(2)}, points)
    with pytest.raises(RobustlabError, match=r"^state.json.points-1-2.pt does not hold the points of block 1"):
        evaluate(_Logits(), x, y, cascade=True, state_file=state, **run)
    # Loaded as weights only: a points file holding any other object is not unpickled.
    torch.save({"x": torch.zeros(3, 4), "margin": torch.zeros(3), "other": fractions.Fraction(1, 3)}, points)
    with pytest.raises(pickle.UnpicklingError):
        evaluate(_Logits(), x, y, cascade=True, state_file=state, **run)
    points.write_bytes(saved_points)
    # A state naming no points file (or another one) is refused even where the right file lies.
    saved_state = state.read_text()
    state.write_text(json.dumps({**json.loads(saved_state), "points_file": None}))
    with pytest.raises(RobustlabError, match="lacks the warm-start points of block 1"):
        evaluate(_Logits(), x, y, cascade=True, state_file=state, **run)
    state.write_text(saved_state)
    STARTS.clear()
    resumed = evaluate(_Logits(), x, y, cascade=True, state_file=state, **run)
    assert STARTS == expected[1:] and _comparable(resumed) == _comparable(ev)
    assert json.loads(state.read_text())["points_file"] is None and not list(tmp_path.glob("*.pt"))
    # Second in the cascade: the first step's points.
    STARTS.clear()
    evaluate(_Logits(), x, y, cascade=True, **{**run, "attacks": {"A": near_a, "W": warm}})
    assert STARTS == [[[2.0, 1.75, 1.0], [1.0, 2.0, 1.25]], [[2.0, 1.5, 1.0], [1.0, 2.0, 1.0]], [[2.0, 1.0, 1.0]]]
    # Not in a cascade, and as the first step, no start is given.
    STARTS.clear()
    evaluate(_Logits(), x, y, **run)
    evaluate(_Logits(), x, y, cascade=True, **{**run, "attacks": {"W": warm, "A": near_a}})
    assert STARTS == [None] * 6


# -- the targeted protocol ---------------------------------------------------------------------

# (id, target class, amount): sample 1 fails towards 0, sample 3 towards both, sample 5 is misclassified.
_T = _Script(tag="T", spend=1, moves=((0, 1, 1.5), (0, 2, 2.5), (1, 2, 3.0), (1, 0, 0.5), (2, 0, 1.25), (2, 1, 1.75),
                                      (4, 2, 2.0), (4, 0, 1.5), (6, 1, 4.0), (6, 2, 1.25)),
             lies=((4, 1.5),))  # right towards 0, wrong towards 2
# Per sample: distance towards each target, best (target), worst (target).
_TARGETS = [
    ({"1": 1.5, "2": 2.5}, 1.5, 1, 2.5, 2),
    ({"2": 3.0, "0": INF}, 3.0, 2, INF, 0),
    ({"0": 1.25, "1": 1.75}, 1.25, 0, 1.75, 1),
    ({"1": INF, "2": INF}, INF, None, INF, None),
    ({"2": 2.0, "0": 1.5}, 1.5, 0, 2.0, 2),
    None,
    ({"1": 4.0, "2": 1.25}, 1.25, 2, 4.0, 1),
]


def _targeted(**kwargs):
    x, y = _data()
    kwargs.setdefault("settings", RunSettings(seed=11, batch_size=3))
    with pytest.warns(DistanceMismatchWarning, match=r"^script: for 1 of 12 samples") as record:
        ev = evaluate_targeted(_Logits(), x, y, attack=_T, threat=THREAT, **kwargs)
    assert len(record) == 1
    return ev


def test_targeted_table_by_hand():
    ev = _targeted()
    assert ev.num_classes == 3 and [s["attacked"] for s in ev.samples] == [True] * 5 + [False, True]
    # The average case: a target per sample (every sample, attacked or not), drawn uniformly from the other
    # classes by a CPU generator seeded with block_seed(seed, "random-target", 0).
    draw = torch.randint(1, 3, (7,), generator=torch.Generator().manual_seed(block_seed(11, "random-target", 0)))
    random_targets = ((_data()[1] + draw) % 3).tolist()
    assert [s["random_target"] for s in ev.samples] == random_targets
    for s, expected, t in zip(ev.samples, _TARGETS, random_targets):
        if expected is None:
            assert (s["targets"], s["best"], s["average"], s["worst"], s["best_target"]) == ({}, None, None, None, None)
            continue
        targets, best, best_t, worst, worst_t = expected
        assert s["targets"] == targets and (s["best"], s["worst"]) == (best, worst)
        assert s["average"] == targets[str(t)]
        if best_t is not None:
            assert (s["best_target"], s["worst_target"]) == (best_t, worst_t)
    assert [s["mismatches"] for s in ev.samples if s["attacked"]] == [0, 0, 0, 0, 1, 0]
    assert ev.samples[4] == {"index": 4, "label": 1, "clean_prediction": 1, "random_target": random_targets[4],
                             "attacked": True, "targets": {"2": 2.0, "0": 1.5}, "best": 1.5, "best_target": 0,
                             "average": {"2": 2.0, "0": 1.5}[str(random_targets[4])], "worst": 2.0, "worst_target": 2,
                             "mismatches": 1, "forwards": 5, "backwards": 0}
    assert ev.samples[5] == {"index": 5, "label": 2, "clean_prediction": 0, "random_target": random_targets[5],
                             "attacked": False, "targets": {}, "best": None, "best_target": None, "average": None,
                             "worst": None, "worst_target": None, "forwards": 1, "backwards": 0}
    # Per target step j, the block's samples attacked towards (y + j) % 3.
    steps = [f"script/target+{j}" for j in (1, 2)]
    assert CALLS == [("T", ids, [(int(_data()[1][i]) + j) % 3 for i in ids], block_seed(11, steps[j - 1], ids[0]))
                     for ids in ([0, 1, 2], [3, 4], [6]) for j in (1, 2)]
    # Costs: 7 clean forwards; each call 2 forwards a sample + 1 forward and 1 backward (the first sample).
    assert [(s["forwards"], s["backwards"]) for s in ev.samples] == [(7, 2), (5, 0), (5, 0), (7, 2), (5, 0), (1, 0),
                                                                     (7, 2)]
    assert ev.cost == {"runs": 12, "forwards": 30, "backwards": 6}
    assert ev.passes["forwards"] == 37 and ev.passes["backwards"] == 6
    assert ev.passes["steps"][steps[0]] == {"forwards": 15, "backwards": 3, "samples": 6, "calls": 3}
    m = ev.metrics
    assert (m["samples"], m["runs"], m["num_classes"], m["reported_distance_mismatches"]) == (7, 12, 3, 1)
    assert m["clean_accuracy"]["count"] == 6
    average = sorted(d for s, e, t in zip(ev.samples, _TARGETS, random_targets) if e
                     for d in [e[0][str(t)]] if math.isfinite(d))
    assert m["cases"]["best"] == {"attacked": 6, "successes": 5, "success_rate": 5 / 6, "mean_distance": 1.7,
                                  "median_distance": 1.5}
    assert m["cases"]["worst"] == {"attacked": 6, "successes": 4, "success_rate": 4 / 6, "mean_distance": 2.5625,
                                   "median_distance": 2.25}
    assert m["cases"]["average"]["successes"] == len(average)
    assert m["cases"]["average"]["mean_distance"] == pytest.approx(sum(average) / len(average))
    assert ev.case_distances("worst") == [2.5, INF, 1.75, INF, 2.0, 4.0]
    with pytest.raises(RobustlabError, match="unknown case"):
        ev.case_distances("median")
    assert ev.attack["attack"] == "script" and ev.provenance["seed"] == 11 and ev.provenance["processes"] == 1
    assert ev.provenance["wall_time_s"] >= 0


def test_targeted_draw_depends_on_the_seed_only_and_round_trips(tmp_path):
    ev = _targeted()
    other_blocks = _targeted(settings=RunSettings(seed=11, batch_size=2))
    assert [s["random_target"] for s in other_blocks.samples] == [s["random_target"] for s in ev.samples]
    draws = {tuple(s["random_target"] for s in _targeted(settings=RunSettings(seed=seed)).samples) for seed in range(6)}
    assert len(draws) > 1  # drawn, not fixed
    path = ev.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["kind"] == "targeted" and data["samples"][1]["targets"]["0"] is None and data["samples"][3]["best"] is None
    assert data["metrics"] == json.loads(json.dumps(ev.metrics)) and data["provenance"]["seed"] == 11
    assert data["model_card"] is None and data["num_classes"] == 3 and data["cost"] == ev.cost
    loaded = TargetedEvaluation.load(path)
    assert loaded.samples == ev.samples and loaded.metrics == ev.metrics and loaded.passes == ev.passes
    assert loaded.cost == ev.cost and loaded.num_classes == 3


def test_targeted_needs_two_classes():
    x = torch.zeros(2, 2)
    x[:, 0] = torch.arange(2).float()
    x[:, 1] = 5.0
    with pytest.raises(RobustlabError, match="at least 2 classes"):
        evaluate_targeted(_Logits(), x, torch.zeros(2, dtype=torch.long), attack=_T, threat=THREAT)


# -- the suites --------------------------------------------------------------------------------


def _apgd(loss=None, steps=100, restarts=1, targets=None, **extra):
    return {**({"loss": loss} if loss else {}), "steps": steps, "restarts": restarts,
            **({"n_target_classes": targets} if targets is not None else {}), **extra}


_FAST_APGD = {"early_stop": True, "give_up": 2.0, "keep_near": 0.15}
_FAST_SQUARE = {"queries": 5001, "p_init": 0.8, "rescale_schedule": False, "give_up": 2.0, "keep_near": 0.06}
_FAST_SQUARE_LINF = {"warm_start": True, "cold_search_near": 0.3, "cold_search_queries": 2000}
_AA_SQUARE = {"queries": 5001, "p_init": 0.8, "rescale_schedule": False}


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
@pytest.mark.parametrize("k", [11, 10, 4, 3])
def test_suite_tables_are_the_documented_protocols(norm, k):
    from robustlab.evaluation.suites import suite_spec

    l1 = norm == "L1"
    # AutoAttack's standard version (set_version("standard"); for L1 its L1 version, without Square).
    standard = [("apgd-ce", "apgd", _apgd("ce", restarts=5 if l1 else 1)),
                ("apgd-t", "apgd-t", _apgd(targets=min(5 if l1 else 9, k - 1))),
                ("fab-t", "fab-t", _apgd(targets=min(9, k - 1)))] + ([] if l1 else [("square", "square", _AA_SQUARE)])
    # AutoAttack's plus version, PGD on the margin loss, Square with 10000 queries.
    thorough = [("apgd-ce", "apgd", _apgd("ce", restarts=5)), ("apgd-dlr", "apgd", _apgd("dlr", restarts=5)),
                ("pgd-margin", "pgd", _apgd("margin", restarts=5)), ("fab", "fab", _apgd(restarts=5))] + \
        ([] if l1 else [("square", "square", {"queries": 10000, "p_init": 0.8})]) + \
        [("apgd-t", "apgd-t", _apgd(targets=min(9, k - 1))), ("fab-t", "fab-t", _apgd(targets=min(9, k - 1)))]
    fast = [("apgd-ce", "apgd", _apgd("ce", **_FAST_APGD)),
            ("apgd-t", "apgd-t", {**_apgd(targets=min(4, k - 1)), "ranking": "linear", **_FAST_APGD})] + \
        ([] if l1 else [("square", "square", {**_FAST_SQUARE, **_FAST_SQUARE_LINF} if norm == "Linf" else _FAST_SQUARE)])
    quick = [("apgd-ce", "apgd", _apgd("ce", steps=20)), ("apgd-t", "apgd-t", _apgd(steps=20, targets=min(3, k - 1)))]
    for name, table in [("standard", standard), ("thorough", thorough), ("fast", fast), ("quick", quick)]:
        assert suite_spec(name, norm, k) == table, name


def test_suite_class_counts_at_their_limits():
    from robustlab.evaluation.suites import suite_spec

    assert [p.get("n_target_classes") for _, _, p in suite_spec("quick", "Linf", 2)] == [None, 1]
    assert [p.get("n_target_classes") for _, _, p in suite_spec("standard", "L2", 2)] == [None, 1, 1, None]
    assert [p.get("n_target_classes") for _, _, p in suite_spec("thorough", "L2", 3)][-2:] == [2, 2]
    with pytest.raises(RobustlabError, match="at least 3 classes, the model has 2"):
        suite_spec("thorough", "L2", 2)
    for bad in (True, 2.0, 1):
        with pytest.raises(RobustlabError, match="num_classes must be an integer >= 2"):
            suite_spec("quick", "L2", bad)


@pytest.mark.parametrize("name", ["standard", "thorough", "fast", "quick"])
def test_suite_attacks_carry_their_tables_hyperparameters(name, monkeypatch):
    from robustlab.attacks import ATTACKS, SquareAttack
    from robustlab.evaluation.suites import build_suite, suite_spec

    built = build_suite(name, "Linf", 10)
    for key, registered, params in suite_spec(name, "Linf", 10):
        assert type(built[key]) is ATTACKS[registered]
        assert {p: getattr(built[key], p) for p in params} == params, key
    if name in ("standard", "fast"):  # a registered attack that lost the norm the suite needs it for

        class LinfSquare(SquareAttack):
            norms = frozenset({"Linf"})

        monkeypatch.setitem(ATTACKS, "square", LinfSquare)
        with pytest.raises(RobustlabError, match=rf"^the '{name}' suite needs 'square' for L2, which it does not "
                                                 r"support \(it supports \['Linf'\]\)$"):
            build_suite(name, "L2", 10)


def test_documents_of_another_kind_are_refused(tmp_path):
    targeted = _targeted().save(tmp_path / "t.json")
    minimum = _minimum_norm().save(tmp_path / "m.json")
    with pytest.raises(RobustlabError, match="targeted"):
        MinimumNormEvaluation.load(targeted)
    with pytest.raises(RobustlabError, match="minimum-norm"):
        TargetedEvaluation.load(minimum)


def test_documents_round_trip_every_field_and_read_older_ones(tmp_path):
    card = {"architecture": "logits"}
    for ev, cls in [(_minimum_norm(model_card=card), MinimumNormEvaluation), (_targeted(model_card=card), TargetedEvaluation)]:
        path = ev.save(tmp_path / "doc.json")
        loaded = cls.load(path)
        assert loaded.provenance == ev.provenance and loaded.model_card == card and loaded.cost == ev.cost
        assert loaded.passes == ev.passes and loaded.threat == ev.threat
        assert (loaded.attack == ev.attack) if cls is TargetedEvaluation else (loaded.attacks == ev.attacks)
        # A document written before cost, passes, provenance and model cards: read with empty ones.
        data = json.loads(path.read_text())
        for key in ("cost", "passes", "provenance", "model_card"):
            del data[key]
        path.write_text(json.dumps(data))
        older = cls.load(path)
        assert (older.cost, older.passes, older.provenance, older.model_card) == ({}, {}, {}, None)
        assert older.samples == ev.samples


@dataclass(frozen=True, kw_only=True)
class _NamelessScript(_Script):
    name = ""


def test_targeted_protocol_names_steps_resumes_and_takes_two_classes(tmp_path):
    y = torch.tensor([0, 1, 1])
    x = torch.ones(3, 3)
    x[:, 0] = torch.arange(3).float()
    x[torch.arange(3), 1 + y] = 2.0
    moves = ((0, 1, 1.5), (1, 0, 2.5))
    # Sample 0 reports a wrong distance, sample 2 a success it did not find (checked on the two top logits).
    with pytest.warns(DistanceMismatchWarning, match="^_NamelessScript: for 2 of 3 samples"):
        ev = evaluate_targeted(_Logits(), x, y, attack=_NamelessScript(tag="N", moves=moves, lies=((0, 1.0), (2, 1.0))),
                               threat=THREAT)
    assert [s["mismatches"] for s in ev.samples] == [1, 0, 1] and ev.samples[2]["forwards"] == 4
    assert ev.num_classes == 2 and list(ev.passes["steps"]) == ["attack/target+1"]  # named "attack" without a name
    assert [(s["best"], s["worst"], s["average"], s["random_target"]) for s in ev.samples] == \
        [(1.5, 1.5, 1.5, 1), (2.5, 2.5, 2.5, 0), (INF, INF, INF, 0)]
    # Resumed by default: a finished state file runs nothing again.
    state = tmp_path / "state.json"
    named = _Script(tag="N", moves=moves)
    first = evaluate_targeted(_Logits(), x, y, attack=named, threat=THREAT, state_file=state)
    CALLS.clear()
    assert evaluate_targeted(_Logits(), x, y, attack=named, threat=THREAT, state_file=state).samples == first.samples
    assert CALLS == []
    assert len(evaluate_targeted(_Logits(), x, y, attack=named, threat=THREAT, state_file=state, resume=False).samples) == 3
    assert CALLS == [("N", [0, 1, 2], [1, 0, 0], block_seed(0, "script/target+1", 0))]
    with pytest.raises(RobustlabError, match="^evaluate_targeted measures each sample.s minimal distance"):
        evaluate_targeted(_Logits(), x, y, attack=named, threat=L2(1.0))
    with pytest.raises(RobustlabError, match=r"^'script' \(_Fixed\) is a fixed-budget attack"):
        evaluate_targeted(_Logits(), x, y, attack=_Fixed(), threat=THREAT)
    with pytest.raises(RobustlabError, match=r"^'attack' is not a robustlab Attack \(got object\)$"):
        evaluate_targeted(_Logits(), x, y, attack=object(), threat=THREAT)


@dataclass(frozen=True, kw_only=True)
class _Silent(_Script):
    """Reports no best distance of its own."""

    def _run(self, oracle, x, y, *, threat, targets, generator):
        return super()._run(oracle, x, y, threat=threat, targets=targets, generator=generator)[0], {}


@dataclass(frozen=True, kw_only=True)
class _ListReport(_Script):
    """Reports its distances as a Python list."""

    def _run(self, oracle, x, y, *, threat, targets, generator):
        x_adv, extras = super()._run(oracle, x, y, threat=threat, targets=targets, generator=generator)
        return x_adv, {"best_distance": extras["best_distance"].tolist()}


def test_reported_distances_are_read_at_the_inputs_precision():
    x, y = _data()
    lies = ((1, 1.1),)  # not a float32 number
    with pytest.warns(DistanceMismatchWarning, match="^L: for 1 of 6 samples"):
        ev = evaluate_minimum_norm(_Logits(), x.double(), y, threat=THREAT,
                                   attacks={"L": _ListReport(moves=((0, 1, 1.5),), lies=lies)})
    assert ev.samples[1]["attacks"]["L"] == {"distance": INF, "reported": 1.1, "mismatch": True}
    assert ev.samples[0]["attacks"]["L"] == {"distance": 1.5, "reported": 1.5, "mismatch": False}


def test_an_attack_without_its_own_distances_is_not_cross_checked():
    x, y = _data()
    ev = evaluate_minimum_norm(_Logits(), x, y, attacks={"S": _Silent(moves=_A.moves)}, threat=THREAT)
    assert [s["attacks"]["S"] for s in ev.samples] == [{"distance": d} for d in (1.5, 3.0, INF, 2.0, INF, 0.0, 3.125)]
    assert ev.metrics["reported_distance_mismatches"] == {"S": 0}


def test_targeted_options_reach_the_runner(tmp_path, monkeypatch):
    from test_evaluation_runner import FakeGroup

    x, y = _data()
    with pytest.raises(RobustlabError, match="num_classes"):
        evaluate_targeted(_Logits(), x, y, attack=_T, threat=THREAT, num_classes=4)
    state = tmp_path / "state.json"
    ev = _targeted(indices=torch.arange(7) * 2, state_file=state)
    assert [s["index"] for s in ev.samples] == list(range(0, 14, 2))
    assert json.loads(state.read_text())["fingerprint"]["settings"]["mode"] == "targeted"
    group = FakeGroup(2)
    monkeypatch.setattr(runner_module, "rank_and_world", group.rank_and_world)
    monkeypatch.setattr(runner_module, "all_gather", group.all_gather)
    with pytest.warns(DistanceMismatchWarning):  # from both ranks' threads: recorded by the main thread's filter
        results = group.run(lambda rank: evaluate_targeted(_Logits(), x, y, attack=_T, threat=THREAT, distributed=True,
                                                           settings=RunSettings(seed=11, batch_size=3)))
    for shard in results:
        assert _comparable(shard)["samples"] == _comparable(_targeted())["samples"]
        assert shard.provenance["processes"] == 2


class _Probabilities(nn.Module):
    def forward(self, x):
        return (x[:, 1:] * 1.0).softmax(dim=1)


class _NaNFor6(nn.Module):
    """The logits of sample 6 are NaN (only the rank holding it sees them)."""

    def forward(self, x):
        return torch.where((x[:, :1] == 6), math.nan, x[:, 1:] * 1.0)


def test_warnings_point_at_the_caller():
    """Left out of the mutation runs (benchmarks/mutation.py): mutmut's trampolines add stack frames."""
    from robustlab.errors import ProbabilityOutputWarning

    x, y = _data()
    with pytest.warns(DistanceMismatchWarning) as record:
        line = inspect.currentframe().f_lineno + 1
        evaluate_minimum_norm(_Logits(), x, y, attacks={"A": _A, "B": _B}, threat=THREAT)
    assert [(w.filename, w.lineno) for w in record] == [(__file__, line)]
    with pytest.warns(DistanceMismatchWarning) as record:
        line = inspect.currentframe().f_lineno + 1
        evaluate_targeted(_Logits(), x, y, attack=_T, threat=THREAT)
    assert [(w.filename, w.lineno) for w in record] == [(__file__, line)]
    with pytest.warns(ProbabilityOutputWarning) as record:
        line = inspect.currentframe().f_lineno + 1
        evaluate_minimum_norm(_Probabilities(), x, y, attacks={"S": _Silent()}, threat=THREAT)
    assert (__file__, line) in [(w.filename, w.lineno) for w in record]


def test_clean_pass_checks_reach_every_rank(tmp_path, monkeypatch):
    from test_evaluation_runner import FakeGroup

    x, y = _data()
    # A resumed run checks the classes the state file recorded.
    state = tmp_path / "state.json"
    run = dict(attacks={"S": _Silent()}, threat=THREAT, state_file=state)
    first = evaluate_minimum_norm(_Logits(), x, y, **run)
    assert evaluate_minimum_norm(_Logits(), x, y, num_classes=3, **run).samples == first.samples
    with pytest.raises(RobustlabError, match=r"^the model has 3 outputs \(says the state file\) but num_classes is 4$"):
        evaluate_minimum_norm(_Logits(), x, y, num_classes=4, **run)
    # Bad logits on one rank's shard are an error on every rank, before anything is attacked.
    group = FakeGroup(2)
    monkeypatch.setattr(runner_module, "rank_and_world", group.rank_and_world)
    monkeypatch.setattr(runner_module, "all_gather", group.all_gather)

    def attempt(rank):
        try:
            evaluate_minimum_norm(_NaNFor6(), x, y, attacks={"S": _Silent(tag="S")}, threat=THREAT, distributed=True,
                                  settings=RunSettings(batch_size=3))
        except RobustlabError as exc:
            return str(exc)
        return None

    CALLS.clear()
    errors = group.run(attempt)
    assert len(errors) == 2 and errors[0] == errors[1] and "NaN" in errors[0] and CALLS == []


def test_bad_run_inputs_are_refused_before_any_model_pass():
    x, y = _data()
    run = dict(attacks={"A": _A}, threat=THREAT)
    for bad in (True, 1, 3.0):
        with pytest.raises(RobustlabError, match=rf"^num_classes must be an integer >= 2, got {bad!r}$"):
            evaluate_minimum_norm(_Logits(), x, y, num_classes=bad, **run)
    with pytest.raises(RobustlabError, match=r"^labels must lie in \[0, 2\) for num_classes=2; got a label 2$"):
        evaluate_minimum_norm(_Logits(), x, y, num_classes=2, **run)
    with pytest.raises(RobustlabError, match=r"^indices must be integers \(positions in the original split\), "
                                             r"got dtype torch.float32$"):
        evaluate_minimum_norm(_Logits(), x, y, indices=torch.arange(7.0), **run)
    with pytest.raises(RobustlabError, match=r"^indices must be integers .*got dtype torch.bool$"):
        evaluate_minimum_norm(_Logits(), x, y, indices=torch.ones(7, dtype=torch.bool), **run)
    with pytest.raises(RobustlabError, match=r"^indices must have shape \[7\] \(one per sample\), got \(6,\)$"):
        evaluate_minimum_norm(_Logits(), x, y, indices=torch.arange(6), **run)
    with pytest.raises(RobustlabError, match=r"^settings must be a robustlab.settings.RunSettings, got dict$"):
        evaluate_minimum_norm(_Logits(), x, y, settings={"seed": 0}, **run)
    assert CALLS == []
    # Indices as a list, of any integer dtype, are kept as int64 positions.
    with pytest.warns(DistanceMismatchWarning):
        ev = evaluate_minimum_norm(_Logits(), x, y, indices=[10, 11, 12, 13, 14, 15, 16], attacks={"A": _A, "B": _B},
                                   threat=THREAT)
    assert [s["index"] for s in ev.samples] == list(range(10, 17))


@pytest.mark.filterwarnings("ignore::robustlab.errors.DistanceMismatchWarning")  # raised in the ranks' threads
def test_ranks_must_hold_the_same_data_and_only_rank_0_reports_progress(monkeypatch, caplog):
    from test_evaluation_runner import FakeGroup

    group = FakeGroup(2)
    monkeypatch.setattr(runner_module, "rank_and_world", group.rank_and_world)
    monkeypatch.setattr(runner_module, "all_gather", group.all_gather)

    def attempt(rank, differ):
        x, y = _data()
        if differ and rank:
            x[0, 3] += 0.5
        try:
            return evaluate_minimum_norm(_Logits(), x, y, attacks={"A": _A, "B": _B}, threat=THREAT, distributed=True,
                                         settings=RunSettings(seed=7, batch_size=3, progress=True))
        except RobustlabError as exc:
            return str(exc)

    assert group.run(lambda rank: attempt(rank, True)) == ["the ranks of the process group hold different data or "
                                                            "model weights; every rank must load the same ones"] * 2
    with caplog.at_level(logging.INFO, logger="robustlab"):
        results = group.run(lambda rank: attempt(rank, False))
    assert all(r.provenance["processes"] == 2 for r in results)
    assert [re.sub(r"in [0-9.]+ s", "in T s", r.getMessage()) for r in caplog.records if r.name == "robustlab"] == \
        ["minimum-norm: 12/12 sample in T s (step=B)"]  # rank 0 alone, on its shard: blocks 0 and 1


@dataclass(frozen=True, kw_only=True)
class _WithCallable(_Script):
    hook: object = None  # configured by its repr, which carries the object's address


def test_fingerprint_and_run_blocks_defaults(tmp_path):
    from robustlab.evaluation.runner import Step, fingerprint, run_blocks

    x, y = _data()
    idx = torch.arange(7)
    linear = nn.Linear(4, 3)

    def fp(model=linear, x=x, y=y, idx=idx, attacks=None, settings=None):
        return fingerprint(model, x, y, idx, threat=THREAT, attacks=attacks or {"A": _A}, settings=settings or {"seed": 0})

    base = fp()
    assert base["threat"] == THREAT.to_dict() and base["attacks"] == [["A", _A.config()]]
    assert base["settings"] == {"seed": 0}
    changed = nn.Linear(4, 3)
    changed.load_state_dict(linear.state_dict())
    with torch.no_grad():
        changed.bias[0] += 1
    assert fp(changed)["model"] != base["model"] and fp(changed)["data"] == base["data"]
    assert fp(x=x + 0.5)["data"] != base["data"] and fp(idx=idx + 1)["data"] != base["data"]
    # Two hooks that differ only by their address fingerprint alike (a resumed process has new addresses).
    hooks = [lambda z: z, lambda z: z]  # both alive: two addresses
    configs = [_WithCallable(hook=h).config()["hook"] for h in hooks]
    assert configs[0] != configs[1] and " at 0x" in configs[0]
    assert fp(attacks={"H": _WithCallable(hook=hooks[0])}) == fp(attacks={"H": _WithCallable(hook=hooks[1])})
    # run_blocks: resumes by default; checks the device and the model's dtype.
    options = dict(threat=THREAT, attacks={"A": _A}, steps=lambda k: [Step("A", _A)], mode="minimum-norm",
                   state_file=tmp_path / "state.json")
    first = run_blocks(_Logits(), x, y, **options)
    CALLS.clear()
    assert run_blocks(_Logits(), x, y, **options).table.results == first.table.results and CALLS == []
    # Indices are positions: the same ones in another integer dtype are the same run.
    again = run_blocks(_Logits(), x, y, indices=torch.arange(7, dtype=torch.int32), **options)
    assert again.indices == list(range(7)) and CALLS == []
    with pytest.raises(RobustlabError, match="the run settings say device 'meta' but the inputs are on cpu"):
        run_blocks(_Logits(), x, y, settings=RunSettings(device="meta"), **{**options, "state_file": None})
    with pytest.raises(RobustlabError, match="x has dtype torch.float32 but the model's parameters are torch.float64"):
        run_blocks(nn.Linear(4, 3).double(), x, y, **{**options, "state_file": None})
