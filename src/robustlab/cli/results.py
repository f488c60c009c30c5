"""``robustlab results ACTION``: the results database (list, show, compare, export, import,
delete runs; leaderboard)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from robustlab.cli.options import check_out_file, eps_value, positive_int
from robustlab.cli.tables import accuracy_rows, percent_or_dash, print_columns, print_table
from robustlab.io import read_json, write_atomic


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "results", help="the results database: list, show, compare, export, import, delete runs; leaderboard")
    results = p.add_subparsers(dest="action", required=True)

    def results_parser(name: str, help: str) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = results.add_parser(name, help=help)
        q.add_argument("--db", help="database file (default: $ROBUSTLAB_RESULTS, else the user data directory)")
        q.set_defaults(func=run)
        return q

    q = results_parser("list", "stored runs, newest first")
    q.add_argument("--dataset")
    q.add_argument("--norm")
    q.add_argument("--kind", choices=["fixed", "minimum-norm", "targeted"])
    q.add_argument("--model", help="a prefix of the model card hash")
    q.add_argument("--limit", type=positive_int)
    results_parser("show", "one run: model, threat, attacks, metrics, provenance").add_argument("ids", type=int, nargs=1, metavar="ID")
    results_parser("compare", "two runs side by side").add_argument("ids", type=int, nargs=2, metavar="ID")
    results_parser("delete", "remove runs (and their samples) from the database").add_argument(
        "ids", type=int, nargs="+", metavar="ID")
    q = results_parser("export", "one run as JSON or per-sample CSV")
    q.add_argument("ids", type=int, nargs=1, metavar="ID")
    q.add_argument("--format", choices=["json", "csv"], default="json")
    q.add_argument("--out", help="file to write (default: standard output)")
    q = results_parser("import", "store evaluation JSON files (evaluate's output, or an export)")
    q.add_argument("files", nargs="+")
    q.add_argument("--dataset", help="default: the export's metadata, else the model card's dataset")
    q.add_argument("--split")
    q.add_argument("--label")
    q = results_parser("leaderboard", "robust accuracy per model for a dataset and threat model, best first")
    q.add_argument("--dataset", required=True)
    q.add_argument("--norm", default="Linf")
    q.add_argument("--eps", type=eps_value, required=True)
    return p


def run(args: argparse.Namespace) -> int:
    from robustlab.report.store import ResultsStore

    if args.action == "export" and args.out:
        check_out_file(args.out)
    with ResultsStore(args.db, create=args.action == "import") as store:
        if args.action == "import":
            for file in args.files:
                document = read_json(file)
                run_id = store.add(document, dataset=args.dataset, split=args.split, label=args.label)
                print(f"stored {file} as run {run_id} in {store.path}")
        elif args.action == "list":
            runs = store.runs(dataset=args.dataset, norm=args.norm, kind=args.kind, model=args.model, limit=args.limit)
            print_columns(("id", "created", "kind", "dataset", "model", "threat", "attacks", "n", "clean", "robust", "label"),
                          [(r.id, r.created, r.kind, f"{r.dataset}/{r.split}" if r.split else r.dataset,
                            f"{r.architecture} {(r.model_hash or '')[:10]}",
                            _threat_text({"norm": r.norm, "eps": r.eps}), ",".join(r.attacks), r.samples,
                            percent_or_dash(r.clean_accuracy), percent_or_dash(r.robust_accuracy), r.label or "")
                           for r in runs])
        elif args.action == "show":
            _show_run(store.get(args.ids[0]))
        elif args.action == "delete":
            for run_id in args.ids:
                store.get(run_id)  # every id must exist before any is deleted
            for run_id in args.ids:
                store.delete(run_id)
                print(f"deleted run {run_id} from {store.path}")
        elif args.action == "compare":
            _compare_runs(store.compare(*args.ids))
        elif args.action == "export":
            text = store.export(args.ids[0], args.format)
            if args.out:
                write_atomic(args.out, lambda temporary: temporary.write_text(text, encoding="utf-8"))
                print(f"wrote run {args.ids[0]} to {args.out}")
            else:
                sys.stdout.write(text)
        else:
            rows = store.leaderboard(dataset=args.dataset, norm=args.norm, eps=args.eps)
            print(f"{args.dataset}, {args.norm} eps={args.eps:g}: lowest robust accuracy found per model")
            print_columns(("#", "model", "method", "robust [95% CI]", "clean", "n", "run", "attacks", "runs"),
                          [(rank, f"{e['architecture']} {e['model_hash'][:10]}", e["method"] or "-",
                            _percent_ci(e["robust_accuracy"]), percent_or_dash(e["clean_accuracy"]["value"]),
                            e["samples"], e["run_id"], ",".join(e["attacks"]), e["runs"])
                           for rank, e in enumerate(rows, 1)])
    return 0


def _percent_ci(acc: dict[str, float]) -> str:
    return f"{percent_or_dash(acc['value'])} [{percent_or_dash(acc['ci_low'])}, {percent_or_dash(acc['ci_high'])}]"


def _threat_text(threat: dict[str, Any]) -> str:
    return f"{threat['norm']} eps={'inf' if threat['eps'] is None else format(threat['eps'], 'g')}"


def _show_run(doc: dict[str, Any]) -> None:
    run, card = doc["run"], doc["model_card"] or {}
    print(f"run {run['id']} ({run['kind']}), stored {run['created']}" + (f", label {run['label']!r}" if run["label"] else ""))
    print(f"model: {card.get('architecture', '?')} {run['model_hash'] or '(no model card)'}"
          + (f", weights sha256 {run['weights_hash']}" if run["weights_hash"] else ""))
    print(f"data: {run['dataset']}" + (f"/{run['split']}" if run["split"] else "") + f", {len(doc['samples'])} samples")
    print(f"threat: {_threat_text(doc['threat'])}, bounds {doc['threat']['bounds']}")
    attacks = doc.get("attacks") or {"attack": doc.get("attack")}
    for name, config in attacks.items():
        print(f"attack {name}: {json.dumps(config)}")
    if run["kind"] == "fixed":
        print_table(accuracy_rows(doc["metrics"]), ("accuracy", "value   [95% CI]"))
    else:
        print("metrics: " + json.dumps(doc["metrics"], indent=1))
    print("provenance: " + ", ".join(f"{k}={v}" for k, v in doc["provenance"].items()))


def _compare_runs(comparison: dict[str, Any]) -> None:
    a, b = comparison["runs"]

    def accuracy_of(run: dict[str, Any], *keys: str) -> str:
        value = run["metrics"]
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return percent_or_dash(value.get("value")) if isinstance(value, dict) else "-"

    rows = [("kind", a["kind"], b["kind"]),
            ("model", (a["model_hash"] or "-")[:10], (b["model_hash"] or "-")[:10]),
            ("dataset", a["dataset"], b["dataset"]),
            ("threat", _threat_text(a["threat"]), _threat_text(b["threat"])),
            ("attacks", ",".join(a["attacks"]), ",".join(b["attacks"])),
            ("samples", a["metrics"].get("samples"), b["metrics"].get("samples")),
            ("clean", accuracy_of(a, "clean_accuracy"), accuracy_of(b, "clean_accuracy")),
            ("robust (worst case)", accuracy_of(a, "robust_accuracy"), accuracy_of(b, "robust_accuracy"))]
    for name in dict.fromkeys([*a["attacks"], *b["attacks"]]):
        rows.append((f"robust ({name})", accuracy_of(a, "robust_accuracy_per_attack", name),
                     accuracy_of(b, "robust_accuracy_per_attack", name)))
    print_columns(("", f"run {a['id']}", f"run {b['id']}"), rows)
    if not comparison["same_model"]:
        print("note: different models")
    if not comparison["same_threat"]:
        print("note: different threat models")
    if comparison["samples"] is not None:
        print("per sample (matched on index): " + ", ".join(f"{k} {v}" for k, v in comparison["samples"].items()))
