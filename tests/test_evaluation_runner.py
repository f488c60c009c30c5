"""The block runner shared by the three evaluation modes (fixed eps, minimum norm, targeted):
resuming after a kill and sharding give the same tables, the cost counters add up to what the
model really saw, and every mode refuses bad input before anything is run or written."""

from __future__ import annotations

import copy
import json
import math
import threading
from pathlib import Path
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from robustlab.attacks import DDN, FGSM, FMN, PGD, Attack
from robustlab.errors import RobustlabError
from robustlab.evaluation import CLEAN, evaluate, evaluate_minimum_norm, evaluate_targeted
from robustlab.evaluation import runner as runner_module
from robustlab.evaluation.distributed import shard_range
from robustlab.settings import RunSettings
from robustlab.threat import L2, Linf

pytestmark = pytest.mark.usefixtures("single_thread")

MODES = ("fixed", "minimum-norm", "targeted")
N = {"fixed": 48, "minimum-norm": 48, "targeted": 20}
BATCH = {"fixed": 16, "minimum-norm": 16, "targeted": 8}
# The attack class each mode's test runs interrupt (patched, so that a call can "kill" the run).
INTERRUPTED = {"fixed": PGD, "minimum-norm": DDN, "targeted": DDN}


def run_mode(mode: str, model, x, y, *, seed=5, batch_size=None, device=None, **kwargs):
    kwargs["settings"] = RunSettings(seed=seed, batch_size=BATCH[mode] if batch_size is None else batch_size,
                                     device=device)
    if mode == "fixed":
        kwargs.setdefault("threat", Linf(eps=0.1))
        return evaluate(model, x, y, attacks={"fgsm": FGSM(), "pgd": PGD(steps=3)}, **kwargs)
    if mode == "minimum-norm":
        return evaluate_minimum_norm(model, x, y, attacks={"ddn": DDN(steps=6), "fmn": FMN(steps=4)},
                                     threat=L2(math.inf), **kwargs)
    return evaluate_targeted(model, x, y, attack=DDN(steps=4), threat=L2(math.inf), **kwargs)


@pytest.fixture(scope="module")
def data(digits, digits_mlp):
    """The first test digits, the last one given a wrong label (a clean error for sure)."""
    _, _, x, y = digits
    x, y = x[:48].clone(), y[:48].clone()
    with torch.no_grad():
        y[-1] = (digits_mlp(x[-1:]).argmax(1) + 1) % 10
    return x, y


def batch(mode, data):
    x, y = data
    return x[:N[mode]], y[:N[mode]]


@pytest.fixture(scope="module")
def references(digits_mlp, data):
    return {mode: run_mode(mode, digits_mlp, *batch(mode, data)) for mode in MODES}


class Interrupted(Exception):
    """Stands in for a kill: raised from inside an attack."""


@pytest.fixture
def calls(monkeypatch):
    """``calls(cls)`` counts the calls of ``cls._run``; ``counter["fail_after"] = k`` makes every
    call after the k-th raise :class:`Interrupted`."""
    counter = {"done": 0, "fail_after": math.inf}

    def patch(cls):
        original = cls._run

        def run(self, *args, **kwargs):
            if counter["done"] >= counter["fail_after"]:
                raise Interrupted
            counter["done"] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "_run", run)
        return counter

    return patch


def comparable(ev) -> dict:
    """Everything of an evaluation that must not depend on how it was run (not provenance)."""
    d = json.loads(json.dumps(ev.to_dict()))
    d.pop("provenance")
    return d


# --- resuming after a kill -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_killed_run_resumes_to_the_same_table_in_every_mode(mode, digits_mlp, data, references, tmp_path, calls):
    x, y = batch(mode, data)
    counter = calls(INTERRUPTED[mode])
    full = run_mode(mode, digits_mlp, x, y)
    assert comparable(full) == comparable(references[mode])  # the fixture ran without the patch: same
    in_full_run = counter["done"]
    assert in_full_run >= 3

    state = tmp_path / "state.json"
    counter.update(done=0, fail_after=2)
    with pytest.raises(Interrupted):
        run_mode(mode, digits_mlp, x, y, state_file=state)
    saved = json.loads(state.read_text())
    steps = len(saved["step_keys"])
    assert saved["steps"][0] >= 1 and 0 < sum(saved["steps"]) < len(saved["steps"]) * (1 + steps)  # part way

    counter.update(done=0, fail_after=math.inf)
    resumed = run_mode(mode, digits_mlp, x, y, state_file=state)
    assert counter["done"] == in_full_run - 2  # the finished steps were not redone
    assert comparable(resumed) == comparable(full)  # samples, metrics, per-sample and total passes

    counter.update(done=0)
    again = run_mode(mode, digits_mlp, x, y, state_file=state)  # finished: nothing left to run
    assert counter["done"] == 0 and comparable(again) == comparable(full)


@pytest.mark.parametrize("mode", MODES)
def test_state_file_of_another_mode_or_setting_is_refused(mode, digits_mlp, data, tmp_path):
    x, y = batch(mode, data)
    state = tmp_path / "state.json"
    run_mode(mode, digits_mlp, x[:8], y[:8], state_file=state)
    with pytest.raises(RobustlabError, match="another evaluation \\(different settings\\)"):
        run_mode(mode, digits_mlp, x[:8], y[:8], state_file=state, seed=6)
    with pytest.raises(RobustlabError, match="another evaluation \\(different data\\)"):
        run_mode(mode, digits_mlp, x[1:9], y[1:9], state_file=state)
    other = {"fixed": "minimum-norm", "minimum-norm": "targeted", "targeted": "fixed"}[mode]
    with pytest.raises(RobustlabError, match="another evaluation"):
        run_mode(other, digits_mlp, x[:8], y[:8], state_file=state)


# --- sharding ---------------------------------------------------------------------------------------

class FakeGroup:
    """A process group of threads: ``rank_and_world`` and ``all_gather`` as the runner uses them."""

    def __init__(self, world: int):
        self.world = world
        self.local = threading.local()
        self.barrier = threading.Barrier(world, timeout=120)
        self.slots: list = [None] * world

    def rank_and_world(self) -> tuple[int, int]:
        return self.local.rank, self.world

    def all_gather(self, obj):
        self.slots[self.local.rank] = copy.deepcopy(obj)
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def run(self, fn) -> list:
        results: list = [None] * self.world

        def target(rank: int) -> None:
            self.local.rank = rank
            torch.set_num_threads(1)
            try:
                results[rank] = fn(rank)
            except BaseException as exc:  # noqa: BLE001  (re-raised in the main thread)
                results[rank] = exc
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failures = [r for r in results if isinstance(r, BaseException)]
        for r in sorted(failures, key=lambda r: isinstance(r, threading.BrokenBarrierError)):
            raise r
        return results


@pytest.mark.parametrize("mode", MODES)
def test_sharded_run_equals_the_single_process_table(mode, digits_mlp, data, references, tmp_path, monkeypatch):
    """Two ranks (threads standing in for torchrun's processes, each with its own copy of the
    model) split the blocks, each writes its own state file and gets the merged table."""
    x, y = batch(mode, data)
    group = FakeGroup(2)
    monkeypatch.setattr(runner_module, "rank_and_world", group.rank_and_world)
    monkeypatch.setattr(runner_module, "all_gather", group.all_gather)
    models = [copy.deepcopy(digits_mlp) for _ in range(2)]
    results = group.run(lambda rank: run_mode(mode, models[rank], x, y, distributed=True,
                                              state_file=tmp_path / "state.json"))
    for ev in results:
        assert comparable(ev) == comparable(references[mode])
        assert ev.provenance["processes"] == 2
    shards = [json.loads((tmp_path / f"state.rank{r}-of-2.json").read_text())["shard"] for r in range(2)]
    assert shards == [list(shard_range(len(x), BATCH[mode], r, 2)) for r in range(2)]
    assert 0 < shards[0][1] < len(x)


def test_bad_input_on_one_rank_is_an_error_on_every_rank(digits_mlp, data, monkeypatch):
    """The clean pass is checked on each rank's shard; the other rank must not wait forever."""
    x, y = data
    group = FakeGroup(2)
    monkeypatch.setattr(runner_module, "rank_and_world", group.rank_and_world)
    monkeypatch.setattr(runner_module, "all_gather", group.all_gather)
    model = NaNWhere(digits_mlp, x[40])  # a NaN row in the second rank's shard only
    errors = []

    def rank_run(rank: int):
        try:
            run_mode("fixed", copy.deepcopy(model), x, y, distributed=True)
        except RobustlabError as exc:
            errors.append((rank, str(exc)))

    group.run(rank_run)
    assert sorted(r for r, _ in errors) == [0, 1] and all("NaN logits" in m for _, m in errors)


# --- cost ---------------------------------------------------------------------------------------------

class Counting(nn.Module):
    """Counts the sample-passes the model really sees: rows forwarded, rows backpropagated."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.forwards = 0
        self.backwards = 0

    def forward(self, x):
        out = self.inner(x)
        self.forwards += x.shape[0]
        if out.requires_grad:
            rows = x.shape[0]
            out.register_hook(lambda grad: self._backward(rows))
        return out

    def _backward(self, rows: int) -> None:
        self.backwards += rows


@pytest.mark.parametrize("mode", MODES)
def test_cost_counters_add_up_to_what_the_model_saw(mode, digits_mlp, data, references):
    x, y = batch(mode, data)
    model = Counting(copy.deepcopy(digits_mlp))
    ev = run_mode(mode, model, x, y)
    passes = ev.passes
    assert passes["forwards"] == model.forwards and passes["backwards"] == model.backwards > 0
    assert sum(s["forwards"] for s in ev.samples) == passes["forwards"]
    assert sum(s["backwards"] for s in ev.samples) == passes["backwards"]
    assert passes["clean"]["forwards"] == len(x) and passes["clean"]["backwards"] == 0
    steps = passes["steps"].values()
    assert passes["forwards"] == len(x) + sum(c["forwards"] for c in steps)
    assert passes["backwards"] == sum(c["backwards"] for c in steps)
    assert ev.samples == references[mode].samples  # the wrapper changes nothing but the counts
    for s in ev.samples:
        if s["clean_prediction"] != s["label"]:  # not attacked: its clean forward only
            assert (s["forwards"], s["backwards"]) == (1, 0)
        else:  # the clean forward and, per attack call, at least the template's two forwards
            assert s["forwards"] >= 3 and s["backwards"] >= 1
    assert any(s["clean_prediction"] != s["label"] for s in ev.samples)


@dataclass(frozen=True, kw_only=True)
class SignSteps(Attack):
    """``steps`` gradient-sign steps on every sample of the call alike (a uniform cost), then, with
    ``extra``, one more forward of the call's first row only (an uneven one)."""

    name = "sign-steps"
    norms = frozenset({"Linf"})
    steps: int = 1
    extra: bool = False

    def _run(self, oracle, x, y, *, threat, targets, generator):
        x_adv = x.clone()
        for _ in range(self.steps):
            _, grad, _ = oracle.loss_and_grad(x_adv, lambda logits: nn.functional.cross_entropy(logits, y, reduction="none"))
            x_adv = threat.project(x, x_adv + threat.eps * grad.sign())
        if self.extra:
            oracle.logits(x_adv[:1])
        return x_adv, {}


def test_per_sample_passes_are_exact_where_a_call_treats_its_samples_alike(digits_mlp, data):
    x, y = data
    attacks = {"one": SignSteps(steps=1), "three": SignSteps(steps=3)}
    ev = evaluate(digits_mlp, x, y, threat=Linf(eps=0.1), attacks=attacks, settings=RunSettings(batch_size=16))
    for s in ev.samples:
        if s["broken_by"] != CLEAN:  # clean forward; per call two template forwards plus one per step
            assert (s["forwards"], s["backwards"]) == (1 + (2 + 1) + (2 + 3), 1 + 3)
    assert ev.passes["steps"]["three"]["backwards"] == 3 * ev.passes["steps"]["three"]["samples"]
    assert ev.passes["steps"]["three"]["calls"] == 3 and ev.passes["clean"]["calls"] == 3
    cascade = evaluate(digits_mlp, x, y, threat=Linf(eps=0.1), attacks=attacks, cascade=True, settings=RunSettings(batch_size=16))
    assert {s["backwards"] for s in cascade.samples if s["broken_by"] == "one"} == {1}  # "three" skipped them
    assert cascade.passes["backwards"] < ev.passes["backwards"]
    # An uneven call is shared out in whole passes that still add up.
    model = Counting(copy.deepcopy(digits_mlp))
    uneven = evaluate(model, x, y, threat=Linf(eps=0.1), attacks={"odd": SignSteps(steps=2, extra=True)}, settings=RunSettings(batch_size=16))
    assert sum(s["forwards"] for s in uneven.samples) == uneven.passes["forwards"] == model.forwards
    attacked = [s["forwards"] for s in uneven.samples if s["broken_by"] != CLEAN]
    assert set(attacked) <= {1 + 4, 1 + 5} and attacked.count(1 + 5) == 3  # one extra forward per call


def test_costs_are_saved_and_loaded(references, tmp_path):
    from robustlab.evaluation import Evaluation, MinimumNormEvaluation, TargetedEvaluation

    for mode, cls in zip(MODES, (Evaluation, MinimumNormEvaluation, TargetedEvaluation)):
        ev = references[mode]
        back = cls.load(ev.save(tmp_path / f"{mode}.json"))
        assert back.passes == ev.passes and back.passes["forwards"] > 0
        assert [s["forwards"] for s in back.samples] == [s["forwards"] for s in ev.samples]
    targeted = references["targeted"]
    assert targeted.cost["forwards"] == targeted.passes["forwards"] - targeted.passes["clean"]["forwards"]
    assert targeted.cost["runs"] == 9 * sum(s["attacked"] for s in targeted.samples)


# --- bad input: refused before the clean pass is used, nothing written ------------------------------

class NaNWhere(nn.Module):
    """``inner`` with NaN logits for the inputs equal to ``where`` (all inputs if ``None``)."""

    def __init__(self, inner: nn.Module, where: torch.Tensor | None = None):
        super().__init__()
        self.inner = inner
        self.where = where

    def forward(self, x):
        out = self.inner(x)
        rows = torch.ones(x.shape[0], dtype=torch.bool) if self.where is None else (x == self.where).flatten(1).all(1)
        return out.masked_fill(rows[:, None], math.nan)


def five_outputs(model):
    return nn.Sequential(model, nn.Linear(10, 5))


def set_label(y, i, label):
    y = y.clone()
    y[i] = label
    return y


def with_nan(x):
    x = x.clone()
    x[3, 0, 2, 2] = math.nan
    return x


def with_inf(x):
    x = x.clone()
    x[5, 0, 1, 1] = math.inf
    return x


BAD = [
    # (id, change {model, x, y, kwargs}, the message must name the problem)
    ("label-too-big", lambda m, x, y: (m, x, set_label(y, 4, 13), {}), r"labels must lie in \[0, 10\)"),
    ("label-far-too-big", lambda m, x, y: (m, x, y + 10, {}), r"labels must lie in \[0, 10\)"),
    ("label-negative", lambda m, x, y: (m, x, y - 1, {}), r"labels must lie in .*negative label -1"),
    ("label-one-negative", lambda m, x, y: (m, x, set_label(y, 11, -5), {}), r"negative label -5"),
    ("label-float", lambda m, x, y: (m, x, y.float(), {}), r"y must hold integer class indices.*float32"),
    ("label-double", lambda m, x, y: (m, x, y.double(), {}), r"y must hold integer class indices.*float64"),
    ("label-bool", lambda m, x, y: (m, x, y > 4, {}), r"y must hold integer class indices.*bool"),
    ("label-2d", lambda m, x, y: (m, x, y[:, None], {}), r"y must have shape"),
    ("label-too-few", lambda m, x, y: (m, x, y[:-1], {}), r"y must have shape .*same N"),
    ("five-outputs", lambda m, x, y: (five_outputs(m), x, y, {}), r"labels must lie in \[0, 5\) for a model with 5 outputs"),
    ("five-outputs-num-classes", lambda m, x, y: (five_outputs(m), x, y % 5, {"num_classes": 10}),
     r"model has 5 outputs but num_classes is 10"),
    ("num-classes-too-big", lambda m, x, y: (m, x, y, {"num_classes": 12}), r"model has 10 outputs but num_classes is 12"),
    ("num-classes-too-small", lambda m, x, y: (m, x, y, {"num_classes": 5}), r"labels must lie in \[0, 5\) for num_classes=5"),
    ("num-classes-float", lambda m, x, y: (m, x, y, {"num_classes": 10.0}), r"num_classes must be an integer"),
    ("x-times-255", lambda m, x, y: (m, x * 255, y, {}), r"outside the threat model's bounds"),
    ("x-negative", lambda m, x, y: (m, x - 0.5, y, {}), r"outside the threat model's bounds"),
    ("x-nan", lambda m, x, y: (m, with_nan(x), y, {}), r"x contains NaN or inf"),
    ("x-inf", lambda m, x, y: (m, with_inf(x), y, {}), r"x contains NaN or inf"),
    ("x-uint8", lambda m, x, y: (m, (x * 255).to(torch.uint8), y, {}), r"x must be a floating-point tensor"),
    ("x-flat", lambda m, x, y: (m, x.reshape(-1), y, {}), r"x must be a batch"),
    ("x-float64", lambda m, x, y: (m, x.double(), y, {}), r"x has dtype torch.float64 but the model's parameters are"),
    ("indices-float", lambda m, x, y: (m, x, y, {"indices": torch.arange(len(y)) / 2}), r"indices must be integers.*float"),
    ("indices-float-list", lambda m, x, y: (m, x, y, {"indices": [0.5] * len(y)}), r"indices must be integers"),
    ("indices-short", lambda m, x, y: (m, x, y, {"indices": torch.arange(len(y) - 1)}), r"indices must have shape"),
    ("nan-logits-all", lambda m, x, y: (NaNWhere(m), x, y, {}), r"NaN logits for \d+ of \d+ inputs"),
    ("nan-logits-one", lambda m, x, y: (NaNWhere(m, x[6]), x, y, {}), r"NaN logits for 1 of .*position 6"),
    ("nan-logits-last-block", lambda m, x, y: (NaNWhere(m, x[-2]), x, y, {}), r"NaN logits for 1 of"),
    ("logits-3d", lambda m, x, y: (nn.Sequential(m, nn.Unflatten(1, (2, 5))), x, y, {}), r"logits of shape \[N, K\]"),
    ("batch-size-zero", lambda m, x, y: (m, x, y, {"batch_size": 0}), r"batch_size must be a positive integer"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, change, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_refused_before_anything_is_written(mode, case, change, message, digits_mlp, data, tmp_path):
    x, y = batch(mode, data)
    model, x, y, kwargs = change(digits_mlp, x[:20], y[:20])
    out = tmp_path / "out"
    with pytest.raises(RobustlabError, match=message):
        run_mode(mode, model, x, y, state_file=out / "state.json", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", MODES)
def test_inference_mode_is_a_clear_error(mode, digits_mlp, data, tmp_path):
    x, y = batch(mode, data)
    with torch.inference_mode(), pytest.raises(RobustlabError, match="inference_mode"):
        run_mode(mode, digits_mlp, x[:8], y[:8], state_file=tmp_path / "state.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threat, message", [
    ("Linf", r"ThreatModel with a budget, e.g. Linf\(eps=0.3\).*not the string 'Linf'"),
    ("L2", r"not the string 'L2'"),
    (0.3, r"threat must be a robustlab.threat.ThreatModel, got float"),
])
def test_threat_given_as_a_name_is_a_clear_error(threat, message, digits_mlp, data):
    x, y = data
    with pytest.raises(RobustlabError, match=message):
        evaluate(digits_mlp, x, y, threat=threat, attacks=[FGSM()])


@pytest.mark.parametrize("mode", ["minimum-norm", "targeted"])
def test_unbounded_modes_refuse_bad_threats(mode, digits_mlp, data):
    x, y = data
    fn = evaluate_minimum_norm if mode == "minimum-norm" else evaluate_targeted
    kwargs = {"attacks": [DDN(steps=2)]} if mode == "minimum-norm" else {"attack": DDN(steps=2)}
    with pytest.raises(RobustlabError, match="not the string 'L7'"):
        fn(digits_mlp, x, y, threat="L7", **kwargs)
    with pytest.raises(RobustlabError, match="got float"):
        fn(digits_mlp, x, y, threat=1.0, **kwargs)
    with pytest.raises(RobustlabError, match=r"runs unbounded|is unbounded: pass L2\(math.inf"):
        fn(digits_mlp, x, y, threat=L2(eps=1.0), **kwargs)


# --- valid edge cases give correct results ----------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_equivalent_valid_inputs_give_the_same_table(mode, digits_mlp, data, references):
    x, y = batch(mode, data)
    reference = comparable(references[mode])
    same = [
        run_mode(mode, digits_mlp, x, y.to(torch.int32)),  # int32 labels
        run_mode(mode, digits_mlp, x, y, num_classes=10),  # the right num_classes
        run_mode(mode, digits_mlp, x, y, indices=list(range(len(y)))),  # indices as a list of ints
    ]
    for ev in same:
        assert comparable(ev) == reference
    shifted = run_mode(mode, digits_mlp, x, y, indices=torch.arange(100, 100 + len(y), dtype=torch.int32))
    assert [s["index"] for s in shifted.samples] == list(range(100, 100 + len(y)))
    assert all(type(s["index"]) is int for s in shifted.samples)


@pytest.mark.parametrize("mode", MODES)
def test_every_sample_misclassified_is_valid_and_attacks_nothing(mode, digits_mlp, data):
    x, y = batch(mode, data)
    with torch.no_grad():
        wrong = (digits_mlp(x).argmax(1) + 1) % 10
    ev = run_mode(mode, digits_mlp, x, wrong)
    assert ev.metrics["clean_accuracy"]["value"] == 0.0
    assert ev.passes["forwards"] == len(x) and ev.passes["backwards"] == 0
    assert all(s["clean_prediction"] != s["label"] for s in ev.samples)


@pytest.mark.parametrize("mode", MODES)
def test_empty_input_and_float_noise_at_the_box(mode, digits_mlp, data):
    x, y = batch(mode, data)
    empty = run_mode(mode, digits_mlp, x[:0], y[:0])
    assert empty.samples == [] and empty.passes["forwards"] == 0
    noisy = x[:8].clone()
    noisy[noisy == 1.0] = 1.0 + 1e-7  # float noise past the box is clamped, not an error
    noisy[noisy == 0.0] = -1e-7
    ev = run_mode(mode, digits_mlp, noisy, y[:8])
    assert len(ev.samples) == 8


def test_a_label_the_model_never_predicts_is_valid(digits_mlp, data):
    """All labels in range but one class absent from y: nothing to complain about."""
    x, y = data
    keep = y != 7
    ev = run_mode("fixed", digits_mlp, x[keep], y[keep])
    assert len(ev.samples) == int(keep.sum())


def _gloo_worker(rank: int, world: int, port: int, model, x, y, out: str) -> None:
    import os

    from robustlab.evaluation.distributed import close, init_process_group

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    init_process_group(torch.device("cpu"))
    try:
        for mode in ("minimum-norm", "targeted"):
            ev = run_mode(mode, model, x[:N[mode]], y[:N[mode]], distributed=True, state_file=f"{out}/{mode}.json")
            (Path(out) / f"{mode}-rank{rank}.json").write_text(json.dumps(comparable(ev)))
    finally:
        close()


@pytest.mark.slow  # two fresh interpreters import torch
def test_two_process_gloo_run_equals_single_process_in_the_unbounded_modes(digits_mlp, data, references, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_worker, args=(2, port, digits_mlp, *data, str(tmp_path)), nprocs=2, join=True)
    for mode in ("minimum-norm", "targeted"):
        for rank in range(2):
            assert json.loads((tmp_path / f"{mode}-rank{rank}.json").read_text()) == comparable(references[mode])
        assert sorted(p.name for p in tmp_path.glob(f"{mode}.rank*")) == [f"{mode}.rank0-of-2.json",
                                                                          f"{mode}.rank1-of-2.json"]


# --- warm starts: a later attack continues from the earlier attacks' nearest points --------------------


def _warm_suite():
    from robustlab.attacks import SquareAttack

    return {"pgd": PGD(steps=2), "square": SquareAttack(queries=40, warm_start=True)}


def test_a_warm_step_gets_the_earlier_steps_nearest_points(digits_mlp, data, monkeypatch):
    from robustlab.attacks import SquareAttack

    x, y = batch("fixed", data)
    seen, pgd_results = [], []
    original_square, original_pgd = SquareAttack._run, PGD.__call__

    def square_run(self, oracle, x_, y_, **kwargs):
        seen.append(kwargs.get("start"))
        return original_square(self, oracle, x_, y_, **kwargs)

    def pgd_call(self, *args, **kwargs):
        result = original_pgd(self, *args, **kwargs)
        pgd_results.append(result)
        return result

    monkeypatch.setattr(SquareAttack, "_run", square_run)
    monkeypatch.setattr(PGD, "__call__", pgd_call)
    evaluate(digits_mlp, x, y, threat=Linf(eps=0.1), attacks=_warm_suite(), cascade=True, settings=RunSettings(seed=1, batch_size=16))
    assert len(seen) == len(pgd_results) == 3
    for start, pgd in zip(seen, pgd_results):
        # PGD's points of the samples it did not break, in order: the only earlier step.
        assert start is not None and torch.equal(start, pgd.x_adv[~pgd.success])
    seen.clear()
    evaluate(digits_mlp, x, y, threat=Linf(eps=0.1), attacks={"pgd": PGD(steps=2), "square": SquareAttack(queries=40)}, cascade=True, settings=RunSettings(seed=1, batch_size=16))
    assert seen and all(start is None for start in seen)  # AutoAttack's Square: always cold


def test_killed_run_with_a_warm_step_resumes_to_the_same_table(digits_mlp, data, tmp_path, calls):
    from robustlab.attacks import SquareAttack

    x, y = batch("fixed", data)

    def run(**kwargs):
        return evaluate(digits_mlp, x, y, threat=Linf(eps=0.1), attacks=_warm_suite(), cascade=True, **kwargs, settings=RunSettings(seed=3, batch_size=16))

    full = run()
    counter = calls(SquareAttack)
    state = tmp_path / "state.json"
    counter.update(done=0, fail_after=1)  # killed in the second block's Square, after its PGD
    with pytest.raises(Interrupted):
        run(state_file=state)
    saved = json.loads(state.read_text())
    assert saved["points_file"] == "state.json.points-1-1.pt" and (tmp_path / saved["points_file"]).exists()
    counter.update(done=0, fail_after=math.inf)
    resumed = run(state_file=state)
    assert comparable(resumed) == comparable(full)
    assert counter["done"] == 2  # the second and third blocks' Square
    assert json.loads(state.read_text())["points_file"] is None
    assert not list(tmp_path.glob("*.points-*"))  # nothing left behind

    (tmp_path / "state.json").unlink()
    counter.update(done=0, fail_after=1)
    with pytest.raises(Interrupted):
        run(state_file=state)
    (tmp_path / "state.json.points-1-1.pt").unlink()
    counter.update(done=0, fail_after=math.inf)
    with pytest.raises(RobustlabError, match="warm-start points"):
        run(state_file=state)


# --- run settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": 1.5}, r"seed must be an integer, got 1.5"),
    ({"seed": True}, r"seed must be an integer"),
    ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ({"batch_size": 8.0}, r"batch_size must be a positive integer"),
    ({"progress": 1}, r"progress must be True or False"),
    ({"device": "gpu7"}, r"unknown device 'gpu7'"),
])
def test_run_settings_refuse_bad_values(kwargs, message):
    with pytest.raises(RobustlabError, match=message):
        RunSettings(**kwargs)


def test_run_settings_device_must_be_where_the_inputs_are(digits_mlp, data, tmp_path):
    x, y = data
    assert RunSettings() == RunSettings(seed=0, batch_size=256, progress=False, device=None)
    assert RunSettings(device="cpu").device == "cpu"
    with pytest.raises(RobustlabError, match=r"device 'cuda' but the inputs are on cpu"):
        run_mode("fixed", digits_mlp, x[:8], y[:8], state_file=tmp_path / "state.json", device="cuda")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RobustlabError, match="settings must be a robustlab.settings.RunSettings, got dict"):
        evaluate(digits_mlp, x[:8], y[:8], threat=Linf(eps=0.1), attacks=[FGSM()], settings={"seed": 1})
    # The device the inputs are on is accepted, with or without an index.
    ev = run_mode("fixed", digits_mlp, x[:8], y[:8], device="cpu")
    assert len(ev.samples) == 8
