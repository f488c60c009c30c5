"""The worst-case cascade: equal to the per-sample minimum over its attacks, resumable after a
kill with the same table, refusing foreign state files, identical when sharded; attack suites."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from robustlab.attacks import ATTACKS, FGSM, PGD
from robustlab.errors import RobustlabError
from robustlab.evaluation import CLEAN, SUITES, build_suite, evaluate
from robustlab.evaluation.runner import block_seed
from robustlab.evaluation.distributed import close, init_process_group, shard_range
from robustlab.evaluation.suites import suite_spec
from robustlab.settings import RunSettings
from robustlab.threat import Linf

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 0.1
THREAT = Linf(eps=EPS)


@pytest.fixture(scope="module")
def data(digits):
    _, _, x_test, y_test = digits
    return x_test[:80], y_test[:80]


def attacks(random_start: bool = True) -> dict:
    return {"fgsm": FGSM(), "pgd": PGD(steps=3, random_start=random_start)}


class Interrupted(Exception):
    """Stands in for a kill: raised from inside an attack."""


@pytest.fixture
def count_pgd_calls(monkeypatch):
    """Count PGD calls; ``calls["fail_after"] = k`` makes every call after the k-th raise."""
    calls = {"done": 0, "fail_after": math.inf}
    original = PGD._run

    def run(self, *args, **kwargs):
        if calls["done"] >= calls["fail_after"]:
            raise Interrupted
        calls["done"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PGD, "_run", run)
    return calls


# --- cascade = per-sample minimum over its attacks ----------------------------------------------

def test_cascade_worst_case_equals_the_minimum_over_its_attacks(digits_mlp, data):
    # Deterministic attacks, so that running on fewer samples cannot change any sample's result.
    x, y = data
    full = evaluate(digits_mlp, x, y, threat=THREAT, attacks=attacks(random_start=False), settings=RunSettings(batch_size=16))
    cascade = evaluate(digits_mlp, x, y, threat=THREAT, attacks=attacks(random_start=False),
                       cascade=True, settings=RunSettings(batch_size=16))
    m = full.metrics
    assert m["robust_accuracy"]["value"] < m["clean_accuracy"]["value"] - 0.3  # the attacks really break it
    assert cascade.metrics["robust_accuracy"] == m["robust_accuracy"]
    skipped = 0
    for s, c in zip(full.samples, cascade.samples):
        if s["broken_by"] == CLEAN:
            assert c["broken_by"] == CLEAN
            continue
        assert (c["broken_by"] is None) == (not any(s["attacks"][a]["success"] for a in ("fgsm", "pgd")))
        assert c["broken_by"] == s["broken_by"] and c["distance"] == s["distance"]
        if c["broken_by"] == "fgsm":
            assert c["attacks"]["pgd"]["success"] is None
            skipped += 1
    assert skipped > 0


# --- resuming ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cascade", [True, False])
def test_killed_run_resumes_to_the_same_table(digits_mlp, data, tmp_path, count_pgd_calls, cascade):
    x, y = data
    run = dict(threat=THREAT, attacks=attacks(), settings=RunSettings(seed=5, batch_size=16), cascade=cascade)
    reference = evaluate(digits_mlp, x, y, **run)
    calls_in_full_run = count_pgd_calls["done"]
    assert calls_in_full_run >= 4

    state = tmp_path / "state.json"
    count_pgd_calls.update(done=0, fail_after=2)
    with pytest.raises(Interrupted):
        evaluate(digits_mlp, x, y, state_file=state, **run)
    saved = json.loads(state.read_text())
    assert 0 < sum(saved["steps"]) < 5 * 3  # 5 blocks of 16, 3 steps each: stopped part way

    count_pgd_calls.update(done=0, fail_after=math.inf)
    resumed = evaluate(digits_mlp, x, y, state_file=state, **run)
    assert count_pgd_calls["done"] == calls_in_full_run - 2  # the finished blocks were not redone
    assert resumed.samples == reference.samples
    assert resumed.metrics == reference.metrics

    count_pgd_calls.update(done=0)
    again = evaluate(digits_mlp, x, y, state_file=state, **run)  # a finished state: nothing left to run
    assert count_pgd_calls["done"] == 0 and again.samples == reference.samples


def test_state_file_of_another_evaluation_is_refused(digits_mlp, data, tmp_path):
    x, y = data
    state = tmp_path / "state.json"
    run = dict(threat=THREAT, attacks=attacks(), settings=RunSettings(seed=0, batch_size=16))
    first = evaluate(digits_mlp, x, y, state_file=state, **run)

    other_model = copy.deepcopy(digits_mlp)
    with torch.no_grad():
        other_model[1].bias[0] += 1e-3
    cases = {
        "model": ((other_model, x, y), run),
        "data": ((digits_mlp, x.flip(0), y.flip(0)), run),
        "threat": ((digits_mlp, x, y), {**run, "threat": Linf(eps=0.2)}),
        "attacks": ((digits_mlp, x, y), {**run, "attacks": {"fgsm": FGSM(), "pgd": PGD(steps=4)}}),
        "settings": ((digits_mlp, x, y), {**run, "settings": RunSettings(seed=1, batch_size=16)}),
    }
    for what, (args, kwargs) in cases.items():
        with pytest.raises(RobustlabError, match=f"another evaluation \\(different {what}\\)"):
            evaluate(*args, state_file=state, **kwargs)
    # Reordering the attacks changes a cascade's results, so it is another evaluation too.
    with pytest.raises(RobustlabError, match="different attacks"):
        evaluate(digits_mlp, x, y, state_file=state, **{**run, "attacks": dict(reversed(attacks().items()))})

    fresh = evaluate(digits_mlp, x, y, state_file=state, resume=False, **{**run, "settings": RunSettings(seed=1, batch_size=16)})
    assert json.loads(state.read_text())["fingerprint"]["settings"]["seed"] == 1
    assert len(fresh.samples) == len(first.samples)

    # A state file written before state files had a kind (a "format" field instead) still resumes.
    data = json.loads(state.read_text())
    legacy = {"format": "robustlab-evaluate-state", **{k: v for k, v in data.items() if k != "kind"}}
    state.write_text(json.dumps(legacy))
    assert evaluate(digits_mlp, x, y, state_file=state, **{**run, "settings": RunSettings(seed=1, batch_size=16)}).samples == fresh.samples

    state.write_text("{not json")
    with pytest.raises(RobustlabError, match="cannot read"):
        evaluate(digits_mlp, x, y, state_file=state, **run)
    state.write_text(json.dumps({"samples": []}))
    with pytest.raises(RobustlabError, match="no 'kind': not a robustlab document"):
        evaluate(digits_mlp, x, y, state_file=state, **run)


# --- seeds and shards ------------------------------------------------------------------------------

def test_block_seeds_differ_by_seed_attack_and_block():
    seeds = {block_seed(s, a, b) for s in (0, 1) for a in ("pgd", "apgd") for b in (0, 16, 1000)}
    assert len(seeds) == 12
    assert all(0 <= s < 2**63 for s in seeds)
    assert block_seed(0, "pgd", 16) == block_seed(0, "pgd", 16)


@pytest.mark.parametrize("n, batch_size, world", [(80, 16, 2), (80, 16, 3), (81, 16, 4), (10, 16, 3), (0, 8, 2)])
def test_shard_ranges_cover_whole_blocks_once(n, batch_size, world):
    ranges = [shard_range(n, batch_size, r, world) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (_, stop), (start, _) in zip(ranges, ranges[1:]):
        assert stop == start
    assert all((start % batch_size == 0 or start == n) and start <= stop for start, stop in ranges)
    blocks = [-(-(stop - start) // batch_size) for start, stop in ranges]
    assert max(blocks) - min(blocks) <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard_worker(rank: int, world: int, port: int, model, x, y, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    init_process_group(torch.device("cpu"))
    try:
        ev = evaluate(model, x, y, threat=THREAT, attacks=attacks(), cascade=True,
                      distributed=True, state_file=Path(out) / "state.json", settings=RunSettings(seed=3, batch_size=16))
        ev.save(Path(out) / f"rank{rank}.json")
    finally:
        close()


@pytest.mark.slow  # about 10 s: two fresh interpreters import torch
def test_two_process_gloo_run_equals_single_process(digits_mlp, data, tmp_path):
    x, y = data
    single = evaluate(digits_mlp, x, y, threat=THREAT, attacks=attacks(), cascade=True, settings=RunSettings(seed=3, batch_size=16))
    mp.spawn(_shard_worker, args=(2, _free_port(), digits_mlp, x, y, str(tmp_path)), nprocs=2, join=True)
    expected = json.loads(json.dumps(single.to_dict()["samples"]).replace("Infinity", "null"))
    for rank in range(2):
        merged = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert merged["samples"] == expected
        assert merged["provenance"]["processes"] == 2
    # Each rank resumed nothing and wrote only its own shard's state: blocks 0-2 and 3-4.
    states = [json.loads((tmp_path / f"state.rank{r}-of-2.json").read_text()) for r in range(2)]
    assert [s["shard"] for s in states] == [[0, 48], [48, 80]]


def test_distributed_without_a_process_group_is_a_clear_error(digits_mlp, data):
    x, y = data
    with pytest.raises(RobustlabError, match="process group"):
        evaluate(digits_mlp, x, y, threat=THREAT, attacks=attacks(), distributed=True)


# --- suites -----------------------------------------------------------------------------------------

def test_standard_suite_follows_autoattack():
    spec = suite_spec("standard", THREAT, 10)
    assert [(key, name) for key, name, _ in spec] == [
        ("apgd-ce", "apgd"), ("apgd-t", "apgd-t"), ("fab-t", "fab-t"), ("square", "square")]
    params = {key: p for key, _, p in spec}
    assert params["apgd-ce"] == {"loss": "ce", "steps": 100, "restarts": 1}
    assert params["apgd-t"]["n_target_classes"] == params["fab-t"]["n_target_classes"] == 9
    # AutoAttack runs 5000 Square iterations after the initial query, p schedule not rescaled.
    assert params["square"] == {"queries": 5001, "p_init": 0.8, "rescale_schedule": False}
    capped = {key: p for key, _, p in suite_spec("standard", "L2", 4)}
    assert capped["apgd-t"]["n_target_classes"] == capped["fab-t"]["n_target_classes"] == 3
    l1 = {key: p for key, _, p in suite_spec("standard", "L1", 10)}
    assert l1["apgd-ce"]["restarts"] == 5 and l1["apgd-t"]["n_target_classes"] == 5 and "square" not in l1
    thorough = [key for key, _, _ in suite_spec("thorough", "Linf", 10)]
    assert {"apgd-dlr", "pgd-margin", "fab"} <= set(thorough) and len(thorough) == len(set(thorough))


def test_suite_errors_are_clear(monkeypatch):
    with pytest.raises(RobustlabError, match="unknown attack suite"):
        build_suite("heavy", THREAT, 10)
    with pytest.raises(RobustlabError, match="not 'L0'"):
        build_suite("quick", "L0", 10)
    with pytest.raises(RobustlabError, match="num_classes"):
        build_suite("quick", THREAT, 1)
    with pytest.raises(RobustlabError, match="at least 3 classes"):
        build_suite("thorough", THREAT, 2)
    monkeypatch.delitem(ATTACKS, "apgd-t", raising=False)
    with pytest.raises(RobustlabError, match="needs the attack 'apgd-t', which is not registered"):
        build_suite("quick", THREAT, 10)


@pytest.mark.parametrize("name", sorted(SUITES))
@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_every_suite_builds_for_every_norm(name, norm):
    suite = SUITES[name](norm, 10)
    assert list(suite) == [key for key, _, _ in suite_spec(name, norm, 10)]
    assert all(norm in attack.norms for attack in suite.values())


def test_fast_suite_is_the_documented_protocol():
    spec = {key: (name, params) for key, name, params in suite_spec("fast", THREAT, 10)}
    assert list(spec) == ["apgd-ce", "apgd-t", "square"]
    assert spec["apgd-ce"] == ("apgd", {"loss": "ce", "steps": 100, "restarts": 1, "early_stop": True, "give_up": 2.0,
                                        "keep_near": 0.15})
    assert spec["apgd-t"][1]["ranking"] == "linear" and spec["apgd-t"][1]["n_target_classes"] == 4
    assert spec["apgd-t"][1]["give_up"] == 2.0 and spec["apgd-t"][1]["keep_near"] == 0.15
    assert spec["apgd-t"][1]["early_stop"] is True
    assert spec["square"][1]["give_up"] > 0 and spec["square"][1]["queries"] == 5001
    assert spec["square"][1]["keep_near"] == 0.06
    assert spec["square"][1]["warm_start"] is True
    assert spec["square"][1]["cold_search_near"] == 0.3 and spec["square"][1]["cold_search_queries"] == 2000
    l2_square = suite_spec("fast", "L2", 10)[2][2]
    assert not {"warm_start", "cold_search_near", "cold_search_queries"} & set(l2_square)  # L2: Square's own start
    assert suite_spec("fast", "L2", 3)[1][2]["n_target_classes"] == 2
    assert suite_spec("fast", "L2", 2)[1][2]["n_target_classes"] == 1
    assert [key for key, _, _ in suite_spec("fast", "L1", 10)] == ["apgd-ce", "apgd-t"]


def test_fast_breaks_every_sample_standard_breaks(digits_mlp, data):
    # eps 0.05 on the digits MLP leaves about half of the samples robust: both suites have work.
    x, y = data
    threat = Linf(eps=0.05)
    broken = {}
    for name in ("standard", "fast"):
        ev = evaluate(digits_mlp, x[:48], y[:48], threat=threat, attacks=SUITES[name](threat, 10),
                      cascade=True, settings=RunSettings(seed=0, batch_size=48))
        broken[name] = {s["index"] for s in ev.samples if s["broken_by"] not in (None, "clean")}
        robust = sum(s["broken_by"] is None for s in ev.samples)
        assert 5 <= robust and len(broken[name]) >= 5
    assert broken["standard"] <= broken["fast"]


def test_quick_suite_breaks_a_non_robust_model(digits_mlp, data):
    x, y = data
    ev = evaluate(digits_mlp, x[:48], y[:48], threat=THREAT, attacks=SUITES["quick"](THREAT, 10),
                  cascade=True, settings=RunSettings(batch_size=16))
    m = ev.metrics
    assert set(ev.attacks) == {"apgd-ce", "apgd-t"}
    assert m["robust_accuracy"]["value"] < m["clean_accuracy"]["value"] - 0.4
