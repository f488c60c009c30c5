"""The results database: round trips, exports, crash safety, concurrency, migrations, leaderboard, CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustlab.cli import main
from robustlab.errors import RobustlabError
from robustlab.evaluation import Evaluation, MinimumNormEvaluation
from robustlab.models import ModelCard
from robustlab.report.store import (
    SCHEMA_VERSION,
    ResultsStore,
    card_hash,
    default_results_path,
)
from robustlab.threat import threat_model

STORE_FILE = Path(__file__).resolve().parents[1] / "src" / "robustlab" / "report" / "store.py"


def make_card(architecture: str = "mlp", method: str = "pgd", dataset: str = "mnist") -> dict:
    return ModelCard(architecture=architecture, arguments={"input_shape": [1, 28, 28], "num_classes": 10},
                     dataset=dataset, training={"method": method}).to_dict()


def make_evaluation(card: dict | None, *, n: int = 20, misclassified: int = 2, broken: int = 8, eps: float = 0.3,
                    norm: str = "Linf") -> Evaluation:
    """``n`` samples: the first ``misclassified`` wrong clean, the next ``broken`` broken by pgd
    (fgsm fails on them), the rest robust. Robust accuracy is ``(n - misclassified - broken) / n``."""
    samples = []
    for i in range(n):
        label = i % 10
        if i < misclassified:
            samples.append({"index": 100 + i, "label": label, "clean_prediction": (label + 1) % 10, "broken_by": "clean",
                            "distance": 0.0, "attacks": {"fgsm": {"success": None, "distance": None},
                                                         "pgd": {"success": None, "distance": None}}})
        elif i < misclassified + broken:
            samples.append({"index": 100 + i, "label": label, "clean_prediction": label, "broken_by": "pgd",
                            "distance": eps * (0.5 + i / (4 * n)),
                            "attacks": {"fgsm": {"success": False, "distance": None},
                                        "pgd": {"success": True, "distance": eps * (0.5 + i / (4 * n))}}})
        else:
            samples.append({"index": 100 + i, "label": label, "clean_prediction": label, "broken_by": None,
                            "distance": math.inf, "attacks": {"fgsm": {"success": False, "distance": None},
                                                              "pgd": {"success": False, "distance": None}}})
    return Evaluation(threat=threat_model(norm, eps), samples=samples,
                      attacks={"fgsm": {"name": "fgsm"}, "pgd": {"name": "pgd", "steps": 40, "step_size": 0.01}},
                      provenance={"robustlab": "0.1.0", "seed": 0, "wall_time_s": 1.5}, model_card=card)


def make_minimum_norm(card: dict, distances: list[float], *, misclassified: int = 0) -> MinimumNormEvaluation:
    samples = []
    for i, d in enumerate(distances):
        clean = i < misclassified
        samples.append({"index": i, "label": 1, "clean_prediction": 0 if clean else 1, "distance": 0.0 if clean else d,
                        "best_attack": "clean" if clean else (None if math.isinf(d) else "fmn"),
                        "attacks": {"fmn": {"distance": 0.0 if clean else d}}})
    return MinimumNormEvaluation(threat=threat_model("Linf", math.inf), attacks={"fmn": {"name": "fmn"}},
                                 samples=samples, model_card=card)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "results.sqlite"


# -- round trips -------------------------------------------------------------------------------
def test_round_trip_keeps_everything(db):
    card = make_card()
    ev = make_evaluation(card)
    with ResultsStore(db) as store:
        run_id = store.add(ev, split="test", label="baseline", weights_hash="ab" * 32)
        doc = store.get(run_id)
        [info] = store.runs()
    expected = json.loads(json.dumps(ev.to_dict()).replace("Infinity", "null"))
    for key in ("threat", "attacks", "metrics", "provenance", "model_card", "samples"):
        assert doc[key] == expected[key], key
    assert doc["kind"] == "fixed"
    assert doc["run"] == {"id": run_id, "created": doc["run"]["created"], "kind": "fixed", "model_hash": card_hash(card),
                          "dataset": "mnist", "split": "test", "label": "baseline", "weights_hash": "ab" * 32}
    assert info.id == run_id and info.samples == 20 and info.attacks == ("fgsm", "pgd")
    assert info.clean_accuracy == pytest.approx(0.9) and info.robust_accuracy == pytest.approx(0.5)
    assert info.eps == pytest.approx(0.3) and info.norm == "Linf" and info.architecture == "mlp"


def test_model_card_is_stored_once_and_runs_filter(db):
    card, other = make_card(), make_card("cnn")
    with ResultsStore(db) as store:
        first = store.add(make_evaluation(card))
        store.add(make_evaluation(card, eps=0.1))
        store.add(make_evaluation(other, norm="L2", eps=1.5))
        assert store._conn.execute("SELECT count(*) FROM models").fetchone()[0] == 2
        assert [r.id for r in store.runs()] == [3, 2, 1]
        assert [r.id for r in store.runs(norm="l2")] == [3]
        assert [r.id for r in store.runs(model=card_hash(card)[:8])] == [2, 1]
        assert store.runs(dataset="cifar10") == []
        assert store.get(first)["threat"]["eps"] == pytest.approx(0.3)


def test_json_export_loads_as_evaluation_and_reimports(db, tmp_path):
    card = make_card()
    ev = make_evaluation(card)
    with ResultsStore(db) as store:
        run_id = store.add(ev, split="test", label="x")
        path = tmp_path / "run.json"
        path.write_text(store.export(run_id, "json"))
        loaded = Evaluation.load(path)
        assert loaded.metrics == ev.metrics and loaded.samples[-1]["broken_by"] is None
        assert loaded.threat == ev.threat and loaded.model_card == card
        again = store.add(json.loads(path.read_text()))
        first, second = store.get(run_id), store.get(again)
    assert again != run_id
    assert second["run"]["dataset"] == "mnist" and second["run"]["split"] == "test" and second["run"]["label"] == "x"
    first.pop("run"), second.pop("run")
    assert first == second


def test_csv_export_has_one_row_per_sample_with_flattened_columns(db):
    ev = make_evaluation(make_card())
    with ResultsStore(db) as store:
        text = store.export(store.add(ev), "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(ev.samples)
    assert list(rows[0])[:5] == ["index", "label", "clean_prediction", "broken_by", "distance"]
    for row, sample in zip(rows, ev.samples):
        assert int(row["index"]) == sample["index"] and int(row["label"]) == sample["label"]
        assert row["broken_by"] == (sample["broken_by"] or "")
        assert (float(row["distance"]) if row["distance"] else math.inf) == sample["distance"]
        pgd = sample["attacks"]["pgd"]
        assert row["attacks.pgd.success"] == {None: "", True: "true", False: "false"}[pgd["success"]]
        assert (float(row["attacks.pgd.distance"]) if row["attacks.pgd.distance"] else None) == pgd["distance"]


def test_minimum_norm_run_round_trips(db, tmp_path):
    mn = make_minimum_norm(make_card(), [0.1, 0.2, math.inf, 0.4], misclassified=1)
    with ResultsStore(db) as store:
        run_id = store.add(mn)
        (tmp_path / "mn.json").write_text(store.export(run_id))
        assert store.runs()[0].kind == "minimum-norm" and store.runs()[0].eps is None
    loaded = MinimumNormEvaluation.load(tmp_path / "mn.json")
    assert loaded.distances() == mn.distances() and loaded.robust_accuracy_at(0.3) == mn.robust_accuracy_at(0.3) == 0.5


def test_bad_input_is_refused_clearly(db, tmp_path):
    with ResultsStore(db) as store:
        with pytest.raises(RobustlabError, match="lacks"):
            store.add({"threat": {"norm": "Linf", "eps": 0.3}})
        with pytest.raises(RobustlabError, match="no run 7"):
            store.get(7)
        with pytest.raises(RobustlabError, match="format"):
            store.export(store.add(make_evaluation(make_card())), "xml")
    with pytest.raises(RobustlabError, match="no results database"):
        ResultsStore(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(RobustlabError, match="cannot open"):
        ResultsStore(tmp_path / "junk.sqlite")


def test_default_path_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTLAB_RESULTS", str(tmp_path / "r.sqlite"))
    assert default_results_path() == tmp_path / "r.sqlite"
    monkeypatch.delenv("ROBUSTLAB_RESULTS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_results_path() == tmp_path / "data" / "robustlab" / "results.sqlite"


# -- crash safety and concurrency --------------------------------------------------------------
CHILD = """
import importlib.util, json, sys, time
from pathlib import Path
# Loaded by path: importing robustlab.report would import torch (seconds) in every child.
spec = importlib.util.spec_from_file_location("robustlab_store", {store_file!r})
store = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = store
spec.loader.exec_module(store)
doc = json.loads(Path({doc!r}).read_text())
mode, db, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])
if mode == "hang":
    store._before_commit = lambda: (ready.touch(), time.sleep(120))
    store.ResultsStore(db).add(doc)
else:
    go = Path(sys.argv[4])
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    # A short pause inside each transaction makes the two writers' transactions overlap.
    store._before_commit = lambda: time.sleep(0.02)
    start = time.time()
    with store.ResultsStore(db, timeout=30) as s:
        for i in range(int(mode)):
            s.add(doc, label=f"{{ready.name}}-{{i}}")
    Path(str(ready) + ".times").write_text(json.dumps([start, time.time()]))
"""


def _child(tmp_path: Path, doc: dict) -> Path:
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(store_file=str(STORE_FILE), doc=str(tmp_path / "doc.json")))
    return script


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_writer_killed_mid_transaction_leaves_no_partial_run(db, tmp_path):
    ev = make_evaluation(make_card(), n=50)
    with ResultsStore(db) as store:
        kept = store.add(ev)
    script = _child(tmp_path, ev.to_dict() | {"samples": json.loads(json.dumps(ev.samples).replace("Infinity", "null"))})
    proc = subprocess.Popen([sys.executable, str(script), "hang", str(db), str(tmp_path / "ready")], stderr=subprocess.PIPE)
    try:
        _wait_for(tmp_path / "ready", proc)
        # The child is now inside its transaction, with its run and all its samples inserted.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with ResultsStore(db) as store:
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [r.id for r in store.runs()] == [kept]
        assert store._conn.execute("SELECT count(*) FROM samples").fetchone()[0] == 50
        assert store._conn.execute("SELECT count(*) FROM samples WHERE run_id != ?", (kept,)).fetchone()[0] == 0
        after = store.add(ev)
        assert len(store.get(after)["samples"]) == 50


def test_two_processes_writing_at_once_both_land(db, tmp_path):
    doc = json.loads(json.dumps(make_evaluation(make_card(), n=10).to_dict()).replace("Infinity", "null"))
    script = _child(tmp_path, doc)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), "15", str(db), str(tmp_path / f"w{i}"), str(go)],
                              stderr=subprocess.PIPE) for i in range(2)]
    try:
        for i, proc in enumerate(procs):
            _wait_for(tmp_path / f"w{i}", proc)
        go.touch()
        for proc in procs:
            assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    with ResultsStore(db) as store:
        runs = store.runs()
        assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert sorted(r.label for r in runs) == sorted(f"w{w}-{i}" for w in range(2) for i in range(15))
        assert store._conn.execute("SELECT count(*) FROM samples").fetchone()[0] == 30 * 10
    # The writers were active at the same time (so one waited on the other's lock), not one after the other.
    (start0, end0), (start1, end1) = (json.loads((tmp_path / f"w{i}.times").read_text()) for i in range(2))
    assert start0 < end1 and start1 < end0


# -- schema versions ---------------------------------------------------------------------------
V1_SCHEMA = """
CREATE TABLE models (hash TEXT PRIMARY KEY, card TEXT NOT NULL, architecture TEXT, dataset TEXT, first_seen TEXT NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, model_hash TEXT REFERENCES models(hash),
  dataset TEXT, norm TEXT NOT NULL, eps REAL, samples INTEGER NOT NULL, clean_accuracy REAL, robust_accuracy REAL,
  document TEXT NOT NULL);
CREATE TABLE samples (run_id INTEGER NOT NULL REFERENCES runs(id), position INTEGER NOT NULL, sample_index INTEGER,
  label INTEGER, clean_prediction INTEGER, broken_by TEXT, distance REAL, data TEXT NOT NULL, PRIMARY KEY (run_id, position));
CREATE INDEX runs_by_threat ON runs (dataset, norm, eps);
PRAGMA user_version = 1;
"""


def test_version_1_database_is_migrated(db):
    card = make_card()
    doc = json.loads(json.dumps(make_evaluation(card, n=4, misclassified=0, broken=1).to_dict()).replace("Infinity", "null"))
    samples = doc.pop("samples")
    doc.pop("model_card")
    conn = sqlite3.connect(db)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO models VALUES (?, ?, 'mlp', 'mnist', '2024-01-01T00:00:00+00:00')", (card_hash(card), json.dumps(card)))
    conn.execute("INSERT INTO runs (created, model_hash, dataset, norm, eps, samples, clean_accuracy, robust_accuracy, document) "
                 "VALUES ('2024-01-01T00:00:00+00:00', ?, 'mnist', 'Linf', 0.3, 4, 1.0, 0.75, ?)", (card_hash(card), json.dumps(doc)))
    conn.executemany("INSERT INTO samples VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                     [(i, s["index"], s["label"], s["clean_prediction"], s["broken_by"], s["distance"], json.dumps(s))
                      for i, s in enumerate(samples)])
    conn.commit()
    conn.close()
    with ResultsStore(db) as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        [old] = store.runs()
        assert old.kind == "fixed" and old.label is None and old.robust_accuracy == 0.75
        assert store.get(1)["samples"] == samples
        new = store.add(make_evaluation(card), split="test", label="after")
        assert store.runs(kind="fixed")[0].id == new and store.runs()[0].split == "test"
        assert [e["run_id"] for e in store.leaderboard(dataset="mnist", norm="Linf", eps=0.3)] == [new]


def test_newer_database_is_refused_unchanged(db):
    ResultsStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(RobustlabError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this robustlab"):
        ResultsStore(db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


def test_foreign_sqlite_file_is_refused(db):
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(RobustlabError, match="not a robustlab results database"):
        ResultsStore(db)


# -- leaderboard -------------------------------------------------------------------------------
def test_leaderboard_ranks_models_by_their_strongest_evaluation(db):
    strong, weak, medium, mn_model = make_card("wrn"), make_card("mlp", "natural"), make_card("cnn"), make_card("fmn-net")
    with ResultsStore(db) as store:
        store.add(make_evaluation(strong, broken=2))              # robust 16/20
        weaker_pgd = store.add(make_evaluation(strong, broken=4))  # a stronger attack: 14/20 is the honest number
        store.add(make_evaluation(weak, broken=17))               # 1/20
        medium_run = store.add(make_evaluation(medium, broken=10))  # 8/20
        store.add(make_evaluation(medium, broken=18, eps=0.1))    # other eps: ignored
        store.add(make_evaluation(medium, broken=18, norm="L2"))  # other norm: ignored
        store.add(make_evaluation(make_card("cnn", dataset="cifar10"), broken=0))  # other dataset: ignored
        store.add(make_evaluation(None, broken=0), dataset="mnist")  # no card: no model to rank
        # Minimal distances: at eps 0.3, 0.1 and 0.2 are broken, 0.35 and inf survive: 2/5.
        mn_run = store.add(make_minimum_norm(mn_model, [0.1, 0.2, 0.35, math.inf, 0.05], misclassified=1))
        board = store.leaderboard(dataset="mnist", norm="linf", eps=0.3)
        at_small_eps = store.leaderboard(dataset="mnist", norm="Linf", eps=0.01)
    assert [e["architecture"] for e in board] == ["wrn", "cnn", "fmn-net", "mlp"]
    assert [e["robust_accuracy"]["value"] for e in board] == pytest.approx([0.7, 0.4, 0.4, 0.05])
    top = board[0]
    assert top["run_id"] == weaker_pgd and top["runs"] == 2 and top["attacks"] == ["fgsm", "pgd"]
    assert top["robust_accuracy"]["ci_low"] < 0.7 < top["robust_accuracy"]["ci_high"]
    # cnn and fmn-net tie on robust accuracy; cnn has the higher clean accuracy (0.9 vs 0.8).
    assert board[1]["run_id"] == medium_run and board[2]["run_id"] == mn_run and board[2]["kind"] == "minimum-norm"
    assert board[1]["runs"] == 1
    assert [e["architecture"] for e in at_small_eps] == ["fmn-net"]
    assert at_small_eps[0]["robust_accuracy"]["value"] == pytest.approx(0.8)


def test_leaderboard_rejects_unbounded_eps(db):
    with ResultsStore(db) as store, pytest.raises(RobustlabError, match="finite eps"):
        store.leaderboard(dataset="mnist", norm="Linf", eps=math.inf)


# -- compare and the command line --------------------------------------------------------------
def test_compare_counts_per_sample_agreement(db):
    card = make_card()
    with ResultsStore(db) as store:
        a, b = store.add(make_evaluation(card, broken=4)), store.add(make_evaluation(card, broken=7))
        comparison = store.compare(a, b)
    assert comparison["same_model"] and comparison["same_threat"]
    assert comparison["samples"] == {"common_samples": 20, "robust_in_both": 11, f"robust_only_in_{a}": 3,
                                     f"robust_only_in_{b}": 0, "robust_in_neither": 6}


def test_cli_results_commands(db, tmp_path, capsys):
    with ResultsStore(db) as store:
        a = store.add(make_evaluation(make_card("wrn"), broken=3), label="first")
        b = store.add(make_evaluation(make_card("cnn"), broken=9))
    capsys.readouterr()
    assert main(["results", "list", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["id", "created", "kind"] and len(lines) == 4
    assert lines[2].split()[0] == str(b) and "first" in lines[3] and "75.0%" in lines[3]

    assert main(["results", "show", str(a), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "worst case" in out and "75.0%" in out and '"steps": 40' in out

    assert main(["results", "compare", str(a), str(b), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "note: different models" in out and "robust_only_in_1 6" in out

    assert main(["results", "export", str(a), "--format", "csv", "--db", str(db)]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 20
    out_file = tmp_path / "a.json"
    assert main(["results", "export", str(a), "--out", str(out_file), "--db", str(db)]) == 0
    assert json.loads(out_file.read_text())["run"]["label"] == "first"
    assert f"wrote run {a} to {out_file}" in capsys.readouterr().out

    assert main(["results", "leaderboard", "--dataset", "mnist", "--eps", "0.3", "--db", str(db)]) == 0
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [r.split()[1] for r in rows] == ["wrn", "cnn"]

    other = tmp_path / "other.sqlite"
    assert main(["results", "import", str(out_file), "--db", str(other)]) == 0
    with ResultsStore(other) as store:
        assert store.get(1)["samples"] == json.loads(out_file.read_text())["samples"]

    assert main(["results", "show", "99", "--db", str(db)]) == 2
    assert "no run 99" in capsys.readouterr().err
    assert main(["results", "list", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert not (tmp_path / "none.sqlite").exists()


def test_cli_evaluate_stores_the_run(db, tmp_path, capsys):
    from robustlab.models import build_model, save_model

    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16], seed=0)
    card = ModelCard(architecture="mlp", arguments={"input_shape": [1, 8, 8], "num_classes": 10, "hidden": [16]},
                     dataset="digits")
    save_model(model, tmp_path / "model", card)
    code = main(["evaluate", "--model", str(tmp_path / "model"), "--attack", "fgsm", "--eps", "0.1", "--limit", "20",
                 "--quiet", "--out", str(tmp_path / "eval"), "--db", str(db), "--label", "smoke"])
    assert code == 0
    assert f"stored as run 1 in {db}" in capsys.readouterr().out
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    with ResultsStore(db) as store:
        doc = store.get(1)
    assert doc["samples"] == saved["samples"] and doc["metrics"] == saved["metrics"]
    assert doc["run"]["dataset"] == "digits" and doc["run"]["split"] == "test" and doc["run"]["label"] == "smoke"
    assert len(doc["run"]["weights_hash"]) == 64
