"""The results database: every stored evaluation run, in one SQLite file.

Where: ``path`` if given, else ``$ROBUSTLAB_RESULTS``, else ``$XDG_DATA_HOME/robustlab/results.sqlite``,
else ``~/.local/share/robustlab/results.sqlite`` (the user *data* directory, chosen like the user
cache of :mod:`robustlab.data.cache`: results are not a cache, deleting them loses work).

What: per run, the model card (stored once per card, keyed by the SHA-256 of its canonical JSON),
the threat model, the attack configurations, the metrics, the provenance, a UTC timestamp and
one row per sample. Fixed-budget (:class:`~robustlab.evaluation.Evaluation`), minimum-norm and
targeted evaluations are stored alike: the run keeps the evaluation's ``to_dict()`` minus samples
and card, so :meth:`ResultsStore.get` gives back the same document, and ``Evaluation.load`` (or
``MinimumNormEvaluation.load``, ...) reads an exported JSON file. As in the evaluation JSON files,
an infinite distance is stored as ``null``.

How: one transaction per run (``BEGIN IMMEDIATE`` ... ``COMMIT``), in WAL mode with a busy
timeout, so concurrent writers wait for each other instead of failing, readers never block, and
a writer killed mid-run leaves no trace of that run. The schema is versioned with
``PRAGMA user_version`` and upgraded on open by the ordered :data:`MIGRATIONS`; a database
written by a newer robustlab is refused, unchanged.

Standard library only (``sqlite3``): listing, showing and exporting results need no torch (the
leaderboard borrows the Wilson interval of :mod:`robustlab.evaluation.metrics`, which does).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import robustlab
from robustlab.errors import RobustlabError
from robustlab.formatting import timestamp
from robustlab.io import check_header, jsonable
from robustlab.validate import is_int, is_number

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "ResultsStore", "RunInfo", "card_hash", "default_results_path"]

# Each entry upgrades the schema by one version; entry ``i`` takes a database from version ``i``
# to ``i + 1``. Append only: a released entry is never edited, since databases in the wild
# already ran it.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: models, runs (their evaluation document) and per-sample rows.
    (
        ("CREATE TABLE models (hash TEXT PRIMARY KEY, card TEXT NOT NULL, architecture TEXT, dataset TEXT, "
         "first_seen TEXT NOT NULL)"),
        ("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, "
         "model_hash TEXT REFERENCES models(hash), dataset TEXT, norm TEXT NOT NULL, eps REAL, "
         "samples INTEGER NOT NULL, clean_accuracy REAL, robust_accuracy REAL, document TEXT NOT NULL)"),
        ("CREATE TABLE samples (run_id INTEGER NOT NULL REFERENCES runs(id), position INTEGER NOT NULL, "
         "sample_index INTEGER, label INTEGER, clean_prediction INTEGER, broken_by TEXT, distance REAL, "
         "data TEXT NOT NULL, PRIMARY KEY (run_id, position))"),
        "CREATE INDEX runs_by_threat ON runs (dataset, norm, eps)",
    ),
    # 2: run kinds (minimum-norm and targeted besides fixed-budget), the split, a user label and
    # the hash of the weights file (a card alone does not pin the weights).
    (
        "ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'fixed'",
        "ALTER TABLE runs ADD COLUMN split TEXT",
        "ALTER TABLE runs ADD COLUMN label TEXT",
        "ALTER TABLE runs ADD COLUMN weights_hash TEXT",
        "CREATE INDEX runs_by_model ON runs (model_hash)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

KINDS = ("fixed", "minimum-norm", "targeted")

# Two eps are the same budget when they agree to this relative tolerance (eps typed as 0.3 on
# one command line and computed as 76.5 / 255 in a script).
_EPS_RTOL = 1e-9

# Test hook: called inside the write transaction of :meth:`ResultsStore.add`, after every row is
# inserted and before COMMIT, so that a test can kill a writer mid-transaction.
_before_commit: Callable[[], None] | None = None


def default_results_path() -> Path:
    """``$ROBUSTLAB_RESULTS``, else ``$XDG_DATA_HOME/robustlab/results.sqlite``, else
    ``~/.local/share/robustlab/results.sqlite``. Not created here."""
    if os.environ.get("ROBUSTLAB_RESULTS"):
        return Path(os.environ["ROBUSTLAB_RESULTS"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "robustlab" / "results.sqlite"


@dataclass(frozen=True)
class RunInfo:
    """One stored run, as listed: accuracies are fractions (``None`` where not defined, e.g. the
    robust accuracy of a minimum-norm run, which has one per eps); ``eps`` is ``None`` for unbounded."""

    id: int
    created: str
    kind: str
    model_hash: str | None
    architecture: str | None
    dataset: str | None
    split: str | None
    norm: str
    eps: float | None
    samples: int
    clean_accuracy: float | None
    robust_accuracy: float | None
    label: str | None
    attacks: tuple[str, ...]


class ResultsStore:
    """A results database; open it with ``ResultsStore(path)`` (or as a context manager).

    Args:
        path: the SQLite file (default :func:`default_results_path`).
        create: create the file (and its folder) if missing; with ``False`` a missing file is a
            :class:`RobustlabError`, so that reading never leaves an empty database behind.
        timeout: seconds a writer waits for another writer's transaction before giving up.

    One store object per thread; any number of processes may open the same file at once.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = True, timeout: float = 60.0) -> None:
        self.path = Path(path).expanduser() if path is not None else default_results_path()
        if not self.path.exists():
            if not create:
                raise RobustlabError(f"no results database at {self.path}; store runs with "
                                     "`robustlab evaluate ... --store` (or --db PATH) first")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: no implicit transactions; each one is opened explicitly below.
            self._conn: sqlite3.Connection | None = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            _enable_wal(self._conn, timeout)
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise RobustlabError(f"cannot open the results database {self.path}: {exc}") from None
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a writer that started by reading could
        # otherwise hit SQLITE_BUSY on upgrading its lock, which the busy timeout does not cover.
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RobustlabError(f"the results database {self.path} is closed")
        return self._conn

    def schema_version(self) -> int:
        version: int = self._connection().execute("PRAGMA user_version").fetchone()[0]
        return version

    def _migrate(self) -> None:
        self._check_version(self.schema_version())
        if self.schema_version() == SCHEMA_VERSION:
            return
        with self._transaction(write=True) as conn:
            # Read again under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            self._check_version(version)
            if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise RobustlabError(f"{self.path} is an SQLite database but not a robustlab results database "
                                     "(it has tables but no schema version); pass another --db path")
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise RobustlabError(
                f"the results database {self.path} has schema version {version}, newer than this robustlab "
                f"{robustlab.__version__} can read (up to version {SCHEMA_VERSION}); upgrade robustlab, or use "
                "another --db path. The database was left unchanged."
            )

    # -- writing -----------------------------------------------------------------------------
    def add(self, evaluation: Any, *, dataset: str | None = None, split: str | None = None, label: str | None = None,
            weights_hash: str | None = None) -> int:
        """Store one run in one transaction and return its id.

        Args:
            evaluation: an ``Evaluation``, ``MinimumNormEvaluation`` or ``TargetedEvaluation``,
                or the dict its ``to_dict()`` gives (as read from its JSON file or from
                :meth:`export`; an exported file's ``run`` metadata fills in what is not given here).
            dataset, split: what was evaluated (default: the exported metadata, then the dataset
                named in the model card). The leaderboard matches on ``dataset``.
            label: a free-text name for the run.
            weights_hash: e.g. the SHA-256 of the weights file.
        """
        if not hasattr(evaluation, "to_dict") and not isinstance(evaluation, dict):
            what = f"a list of {len(evaluation)} items" if isinstance(evaluation, list) else f"a {type(evaluation).__name__}"
            raise RobustlabError(f"not an evaluation: got {what}, expected one evaluation (a JSON object, as evaluate "
                                 "writes it or export gives it); store the evaluations of a list one by one")
        document = jsonable(evaluation.to_dict() if hasattr(evaluation, "to_dict") else dict(evaluation))
        meta = document.pop("run", None) or {}
        samples = document.pop("samples", None)
        card = document.pop("model_card", None)
        kind = document.setdefault("kind", "fixed")
        _check_document(document, samples, card, kind)
        check_header(document, "the evaluation", kind)  # a newer version than this robustlab reads is refused
        threat, metrics = document["threat"], document["metrics"]
        dataset = dataset or meta.get("dataset") or (card or {}).get("dataset")
        split = split or meta.get("split")
        label = label if label is not None else meta.get("label")
        weights_hash = weights_hash or meta.get("weights_hash")
        robust = metrics.get("robust_accuracy") if kind == "fixed" else None
        now = timestamp()
        model_hash = None if card is None else card_hash(card)
        with self._transaction(write=True) as conn:
            if card is not None:
                conn.execute("INSERT OR IGNORE INTO models (hash, card, architecture, dataset, first_seen) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (model_hash, _dumps(card), card.get("architecture"), card.get("dataset"), now))
            cursor = conn.execute(
                "INSERT INTO runs (created, kind, model_hash, dataset, split, norm, eps, samples, clean_accuracy, "
                "robust_accuracy, label, weights_hash, document) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, kind, model_hash, dataset, split, threat["norm"], threat["eps"], len(samples),
                 _value_of(metrics.get("clean_accuracy")), _value_of(robust), label, weights_hash, _dumps(document)))
            run_id = cursor.lastrowid
            assert run_id is not None  # set by the INSERT
            conn.executemany(
                "INSERT INTO samples (run_id, position, sample_index, label, clean_prediction, broken_by, distance, "
                "data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (_sample_row(run_id, position, kind, s) for position, s in enumerate(samples)))
            if _before_commit is not None:
                _before_commit()
        return run_id

    def delete(self, run_id: int) -> None:
        """Remove run ``run_id`` and its samples in one transaction (its model card too, when no
        other run refers to it). Raises if there is no such run."""
        if not is_int(run_id):
            raise RobustlabError(f"a run id is an integer, got {run_id!r}")
        with self._transaction(write=True) as conn:
            row = conn.execute("SELECT model_hash FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RobustlabError(f"no run {run_id} in {self.path} (`robustlab results list` shows the runs)")
            conn.execute("DELETE FROM samples WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            if row[0] is not None:
                conn.execute("DELETE FROM models WHERE hash = ? AND NOT EXISTS "
                             "(SELECT 1 FROM runs WHERE model_hash = ?)", (row[0], row[0]))

    # -- reading -----------------------------------------------------------------------------
    def runs(self, *, dataset: str | None = None, norm: str | None = None, kind: str | None = None,
             model: str | None = None, limit: int | None = None) -> list[RunInfo]:
        """Stored runs, newest first, optionally filtered (``model``: a prefix of the model hash)."""
        where: list[str] = []
        params: list[str | int] = []
        if dataset is not None:
            where.append("r.dataset = ?")
            params.append(dataset)
        if norm is not None:
            where.append("lower(r.norm) = ?")
            params.append(_norm_key(norm))
        if kind is not None:
            where.append("r.kind = ?")
            params.append(kind)
        if model is not None:
            where.append("r.model_hash LIKE ? || '%'")
            params.append(model)
        sql = ("SELECT r.id, r.created, r.kind, r.model_hash, m.architecture, r.dataset, r.split, r.norm, r.eps, "
               "r.samples, r.clean_accuracy, r.robust_accuracy, r.label, r.document FROM runs r "
               "LEFT JOIN models m ON m.hash = r.model_hash")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.id DESC LIMIT ?"
        params.append(-1 if limit is None else limit)
        return [_run_info(row) for row in self._connection().execute(sql, params)]

    def get(self, run_id: int) -> dict[str, Any]:
        """The run's evaluation document (``to_dict()`` form, ``inf`` as ``None``) with its
        ``model_card``, ``samples`` in their original order, and ``run`` metadata."""
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT r.id, r.created, r.kind, r.model_hash, r.dataset, r.split, r.label, "
                               "r.weights_hash, r.document, m.card FROM runs r LEFT JOIN models m "
                               "ON m.hash = r.model_hash WHERE r.id = ?", (run_id,)).fetchone()
            if row is None:
                raise RobustlabError(f"no run {run_id} in {self.path} (`robustlab results list` shows the runs)")
            samples = [json.loads(data) for (data,) in
                       conn.execute("SELECT data FROM samples WHERE run_id = ? ORDER BY position", (run_id,))]
        keys = ("id", "created", "kind", "model_hash", "dataset", "split", "label", "weights_hash")
        document = json.loads(row[8])
        document["model_card"] = None if row[9] is None else json.loads(row[9])
        document["samples"] = samples
        document["run"] = dict(zip(keys, row[:8]))
        return document

    def compare(self, a: int, b: int) -> dict[str, Any]:
        """Two runs side by side: their metadata and metrics, and per sample (matched on
        ``index``) how many are robust in both, in only one, or in neither. Robust means
        unbroken: for a fixed-budget run at its eps, for a minimum-norm run at any eps (no
        attack succeeded); targeted runs have no per-sample robustness and get ``None``."""
        first, second = self.get(a), self.get(b)
        robust_a, robust_b = _robust_by_index(first), _robust_by_index(second)
        agreement = None
        if robust_a is not None and robust_b is not None:
            common = robust_a.keys() & robust_b.keys()
            agreement = {"common_samples": len(common),
                         "robust_in_both": sum(robust_a[i] and robust_b[i] for i in common),
                         f"robust_only_in_{a}": sum(robust_a[i] and not robust_b[i] for i in common),
                         f"robust_only_in_{b}": sum(robust_b[i] and not robust_a[i] for i in common),
                         "robust_in_neither": sum(not robust_a[i] and not robust_b[i] for i in common)}
        return {"runs": [{**d["run"], "threat": d["threat"], "attacks": _attack_names(d), "metrics": d["metrics"]}
                         for d in (first, second)],
                "same_model": first["run"]["model_hash"] == second["run"]["model_hash"],
                "same_threat": first["threat"] == second["threat"],
                "samples": agreement}

    def leaderboard(self, *, dataset: str, norm: str, eps: float) -> list[dict[str, Any]]:
        """Robust accuracy per model on ``dataset`` under ``norm`` at ``eps``, best model first.

        Every run is an upper bound on a model's true robust accuracy, so a model's entry is its
        *lowest* robust accuracy over its runs: fixed-budget runs at this eps, and minimum-norm
        runs in this norm evaluated at this eps (a sample is broken where its minimal distance is
        ``<= eps``). Ties are broken by clean accuracy, then by run id. Runs without a model card
        are left out (there is no model to rank).

        Each entry: ``model_hash``, ``architecture``, ``method`` (training method in the card),
        ``robust_accuracy`` (``{"value", "ci_low", "ci_high", "count", "total"}``, Wilson 95%),
        ``clean_accuracy``, ``samples``, ``run_id``, ``kind`` and ``attacks`` of the run that
        gave it, and ``runs`` (how many runs of the model matched).
        """
        from robustlab.evaluation.metrics import accuracy

        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise RobustlabError(f"the leaderboard needs a finite eps >= 0, got {eps!r}")
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT r.id, r.kind, r.model_hash, m.card, r.samples, r.document FROM runs r "
                "JOIN models m ON m.hash = r.model_hash WHERE r.dataset = ? AND lower(r.norm) = ? AND "
                "((r.kind = 'fixed' AND abs(r.eps - ?) <= ? * max(1.0, abs(?))) OR r.kind = 'minimum-norm')",
                (dataset, _norm_key(norm), eps, _EPS_RTOL, eps)).fetchall()
            # Minimum-norm runs: robust at eps = clean-correct with a minimal distance > eps
            # (NULL = no attack succeeded = robust at every eps).
            surviving = dict(conn.execute(
                "SELECT s.run_id, sum(s.clean_prediction = s.label AND (s.distance IS NULL OR s.distance > ?)) "
                "FROM samples s JOIN runs r ON r.id = s.run_id WHERE r.kind = 'minimum-norm' AND r.dataset = ? "
                "AND lower(r.norm) = ? GROUP BY s.run_id", (eps, dataset, _norm_key(norm))).fetchall())
        best: dict[str, dict[str, Any]] = {}
        for run_id, kind, model_hash, card_json, n, document_json in rows:
            document = json.loads(document_json)
            metrics = document["metrics"]
            robust_count = metrics["robust_accuracy"]["count"] if kind == "fixed" else surviving.get(run_id, 0)
            clean = metrics["clean_accuracy"]
            card = json.loads(card_json)
            entry = {"model_hash": model_hash, "architecture": card.get("architecture"),
                     "method": (card.get("training") or {}).get("method"),
                     "robust_accuracy": accuracy(robust_count, n), "clean_accuracy": clean, "samples": n,
                     "run_id": run_id, "kind": kind, "attacks": _attack_names(document), "runs": 1}
            previous = best.get(model_hash)
            if previous is not None:
                entry["runs"] = previous["runs"] + 1
                if _rank_key(previous) <= _rank_key(entry):
                    entry = {**previous, "runs": entry["runs"]}
            best[model_hash] = entry
        return sorted(best.values(), key=lambda e: (-_value_or(e["robust_accuracy"]["value"], -1.0),
                                                    -_value_or(e["clean_accuracy"]["value"], -1.0), e["run_id"]))

    # -- export ------------------------------------------------------------------------------
    def export(self, run_id: int, format: str = "json") -> str:
        """The run as text: ``"json"`` (the document of :meth:`get`; ``Evaluation.load`` and
        :meth:`add` read it back) or ``"csv"`` (one row per sample; nested fields flattened to
        dotted columns such as ``attacks.pgd.success``; ``null`` as an empty cell, booleans as
        ``true``/``false``)."""
        if format not in ("json", "csv"):
            raise RobustlabError(f"export format must be 'json' or 'csv', got {format!r}")
        document = self.get(run_id)
        if format == "json":
            return _dumps(document, indent=1) + "\n"
        rows = [_flatten(s) for s in document["samples"]]
        header = list(dict.fromkeys(key for row in rows for key in row))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _csv_cell(v) for k, v in row.items()} for row in rows)
        return out.getvalue()


# -- helpers ---------------------------------------------------------------------------------
def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch the file to WAL mode (persistent, so this matters only for a new file), retrying
    while another connection holds a lock: SQLite answers a contended journal-mode change with
    SQLITE_BUSY at once instead of calling the busy handler."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


def card_hash(card: dict[str, Any]) -> str:
    """SHA-256 of the model card's canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(card, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _dumps(value: Any, indent: int | None = None) -> str:
    # Strict JSON: documents stored before NaN became null are converted on the way out.
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)


_NORM_NAMES = ("linf", "inf", "l2", "l1", "l0")


def _check_accuracy(acc: Any, where: str, total: int) -> None:
    """An accuracy as the metrics hold it: ``{"value", "ci_low", "ci_high", "count", "total"}``."""
    if not isinstance(acc, dict):
        raise RobustlabError(f"not an evaluation: {where} must be an accuracy {{value, ci_low, ci_high, count, total}}, "
                             f"got {acc!r}")
    for key in ("value", "ci_low", "ci_high"):
        if not (acc.get(key) is None or is_number(acc.get(key), finite=False)):
            raise RobustlabError(f"not an evaluation: {where}.{key} must be a number, got {acc.get(key)!r}")
    count, n = acc.get("count"), acc.get("total")
    if not (isinstance(count, int) and isinstance(n, int) and is_int(count, 0) and is_int(n, 0) and count <= n):
        raise RobustlabError(f"not an evaluation: {where} needs counts 0 <= count <= total, got count {count!r}, "
                             f"total {n!r}")
    if n != total:
        raise RobustlabError(f"not an evaluation: {where}.total is {n} but the document holds {total} samples")


def _check_document(document: dict[str, Any], samples: Any, card: Any, kind: str) -> None:
    """Everything that listing, showing, comparing, exporting and the leaderboard read, so that
    no stored document can break them: refused here, with what is wrong, before anything is
    written."""
    if kind not in KINDS:
        raise RobustlabError(f"unknown evaluation kind {kind!r}; the results database stores {KINDS}")
    attacks_key = "attack" if kind == "targeted" else "attacks"
    missing = [key for key in ("threat", "metrics", "provenance", attacks_key) if not isinstance(document.get(key), dict)]
    if not isinstance(samples, list):
        missing.append("samples")
    if missing:
        raise RobustlabError(f"not an evaluation: it lacks {missing} (or they are not JSON objects; give an "
                             "evaluation or its to_dict())")
    threat = document["threat"]
    eps, bounds = threat.get("eps"), threat.get("bounds")
    if (not isinstance(threat.get("norm"), str) or threat["norm"].lower() not in _NORM_NAMES
            or not (eps is None or (is_number(eps, finite=False) and eps >= 0))):
        raise RobustlabError(f"not an evaluation: its threat model {threat!r} needs a norm (Linf, L2, L1 or L0) and "
                             "an eps >= 0 (null for unbounded)")
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(is_number(b) for b in bounds)
            and bounds[0] < bounds[1]):
        raise RobustlabError(f"not an evaluation: the threat model's bounds must be [low, high], got {bounds!r}")
    if kind != "targeted" and not all(isinstance(c, dict) for c in document["attacks"].values()):
        raise RobustlabError("not an evaluation: each attack's configuration must be a JSON object")
    if card is not None and not isinstance(card, dict):
        raise RobustlabError(f"the model card must be a dict, got {type(card).__name__}")
    if card is not None and not isinstance(card.get("training", {}), (dict, type(None))):
        raise RobustlabError("the model card's training must be a JSON object")
    metrics, n = document["metrics"], len(samples)
    _check_accuracy(metrics.get("clean_accuracy"), "metrics.clean_accuracy", n)
    if kind == "fixed":
        _check_accuracy(metrics.get("robust_accuracy"), "metrics.robust_accuracy", n)
        per_attack = metrics.get("robust_accuracy_per_attack")
        if not isinstance(per_attack, dict):
            raise RobustlabError("not an evaluation: metrics.robust_accuracy_per_attack must map attacks to accuracies")
        for name, acc in per_attack.items():
            _check_accuracy(acc, f"metrics.robust_accuracy_per_attack.{name}", n)
    for position, sample in enumerate(samples):
        _check_sample(sample, position, kind)


def _check_sample(sample: Any, position: int, kind: str) -> None:
    if not isinstance(sample, dict):
        raise RobustlabError("not an evaluation: every sample must be a dict")
    where = f"not an evaluation: sample {position}"
    for key in ("label", "clean_prediction"):
        if not is_int(sample.get(key), 0):
            raise RobustlabError(f"{where}: {key} must be a class index, got {sample.get(key)!r}")
    if not (sample.get("index") is None or is_int(sample.get("index"), 0)):
        raise RobustlabError(f"{where}: index must be an integer >= 0, got {sample.get('index')!r}")
    distance_key, breaker_key = {"fixed": ("distance", "broken_by"), "minimum-norm": ("distance", "best_attack"),
                                 "targeted": ("best", None)}[kind]
    distance = sample.get(distance_key)
    if not (distance is None or (is_number(distance, finite=False) and distance >= 0)):
        raise RobustlabError(f"{where}: {distance_key} must be a number >= 0 or null, got {distance!r}")
    if breaker_key is not None and not (sample.get(breaker_key) is None or isinstance(sample.get(breaker_key), str)):
        raise RobustlabError(f"{where}: {breaker_key} must be an attack name or null, got {sample.get(breaker_key)!r}")
    if kind == "fixed" and breaker_key not in sample:
        raise RobustlabError(f"{where}: it lacks broken_by")


def _value_of(acc: Any) -> float | None:
    """The value of an accuracy dict, ``None`` where absent or NaN (zero samples)."""
    value = acc.get("value") if isinstance(acc, dict) else None
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _value_or(value: float | None, default: float) -> float:
    return default if value is None or math.isnan(value) else value


def _rank_key(entry: dict[str, Any]) -> tuple[float, float, int]:
    """Smaller is the stronger evaluation of a model: lower robust accuracy, then lower clean
    accuracy, then the older run."""
    return (_value_or(entry["robust_accuracy"]["value"], math.inf),
            _value_or(_value_of(entry["clean_accuracy"]), math.inf), entry["run_id"])


def _sample_row(run_id: int, position: int, kind: str, s: dict[str, Any]) -> tuple:
    # The queryable columns: who broke the sample and at what distance (NULL distance =
    # unbroken). A targeted sample has no single breaker; its column is the best-case distance.
    if kind == "targeted":
        broken_by, distance = None, s.get("best")
    elif kind == "minimum-norm":
        broken_by, distance = s.get("best_attack"), s.get("distance")
    else:
        broken_by, distance = s.get("broken_by"), s.get("distance")
    return (run_id, position, s.get("index"), s.get("label"), s.get("clean_prediction"), broken_by,
            distance, _dumps(s))


def _attack_names(document: dict[str, Any]) -> list[str]:
    if "attacks" in document:
        return list(document["attacks"])
    attack = document.get("attack") or {}
    return [attack.get("name", "attack")] if isinstance(attack, dict) else [str(attack)]


def _run_info(row: tuple) -> RunInfo:
    *fields, document = row
    return RunInfo(*fields, attacks=tuple(_attack_names(json.loads(document))))  # type: ignore[misc]  # the columns before attacks


def _robust_by_index(document: dict[str, Any]) -> dict[Any, bool] | None:
    kind = document.get("kind", "fixed")
    if kind == "fixed":
        return {s["index"]: s["broken_by"] is None for s in document["samples"]}
    if kind == "minimum-norm":
        return {s["index"]: s["clean_prediction"] == s["label"] and s["distance"] is None for s in document["samples"]}
    return None


def _norm_key(norm: str) -> str:
    key = str(norm).lower()
    return "linf" if key == "inf" else key


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(_flatten(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)
    return value
