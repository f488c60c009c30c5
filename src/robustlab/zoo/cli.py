"""``robustlab zoo``: list the zoo, show a card, train and publish a model from its recipe.

``robustlab zoo train NAME [NAME ...]`` runs, for each name in turn, ``robustlab train --config
recipes/NAME.toml --out WORKDIR/NAME`` (resumable: a killed run continues from its last epoch)
and then evaluates the model and writes its weights and card into the package
(:func:`robustlab.zoo.build.publish`; the evaluations resume too).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from robustlab.errors import RobustlabError
from robustlab.formatting import percent

__all__ = ["add_zoo_parser", "markdown_table", "table", "zoo_command"]


def _percent(value: float | None) -> str:
    return percent(value, missing="-")


def table() -> tuple[tuple[str, ...], list[tuple[str, ...]], int]:
    """The zoo's table: header, one row per recipe (trained or not) and the weights' total bytes."""
    from robustlab import zoo
    from robustlab.models import checkpoint_paths
    from robustlab.zoo.build import card_row

    header = ("model", "architecture", "method", "eps", "clean", "standard", "fast", "certified", "train (s)",
              "MB", "notes")
    rows: list[tuple[str, ...]] = []
    total = 0
    trained = set(zoo.names())
    # The catalog's order (baseline first), then any recipe it lacks (zoo.entry refuses those).
    for name in [*[n for n in zoo.CATALOG if n in zoo.recipes()], *[n for n in zoo.recipes() if n not in zoo.CATALOG]]:
        info = zoo.entry(name)
        notes = ", ".join(info.labels)
        if name not in trained:
            rows.append((name, zoo.recipe(name).get("model", "?"), zoo.recipe(name).get("method", "natural"),
                         f"{info.eps:g}", "-", "-", "-", "-", "-", "-", ", ".join(filter(None, ["not trained", notes]))))
            continue
        row = card_row(zoo.card(name))
        size = checkpoint_paths(zoo.checkpoint(name))[0].stat().st_size
        total += size
        standard = _percent(row["standard"])
        if row["standard"] is not None and row["standard_images"]:
            standard += f" ({row['standard_images']})"
        rows.append((name, row["architecture"], row["method"], f"{row['eps']:g}", _percent(row["clean"]), standard,
                     _percent(row["fast"]), _percent(row["certified"]), f"{row['training_seconds']:.0f}",
                     f"{size / 1e6:.2f}", notes))
    return header, rows, total


def markdown_table() -> str:
    """The zoo's table in Markdown (the docs and the README carry it; a test keeps them current)."""
    header, rows, _ = table()
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _list(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_table(), end="")
        return 0
    from robustlab.cli.tables import print_columns

    header, rows, total = table()
    print_columns(header, rows)
    trained = sum(1 for row in rows if row[4] != "-")
    print(f"\n{trained} of {len(rows)} models trained; weights {total / 1e6:.2f} MB in all. standard: robust "
          "accuracy under AutoAttack's standard suite on the first (N) test images at eps.")
    return 0


def _show(args: argparse.Namespace) -> int:
    from robustlab import zoo

    print(zoo.card(args.names[0]).to_json())
    return 0


def _train(args: argparse.Namespace) -> int:
    import torch

    from robustlab import zoo
    from robustlab.zoo.build import CARD_SETTINGS, publish, train_recipe

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for name in args.names:
        zoo.entry(name)  # unknown names fail before anything runs
    for name in args.names:
        run_dir = Path(args.workdir) / name
        start = time.perf_counter()
        train_recipe(name, run_dir, data_dir=args.data_dir)
        print(f"{name}: trained in {run_dir} ({time.perf_counter() - start:.0f} s in this run)", flush=True)
        start = time.perf_counter()
        card = publish(name, run_dir, out_dir=args.out or zoo.MODELS_DIR, data_dir=args.data_dir,
                       images=args.images, settings=replace(CARD_SETTINGS, progress=not args.quiet))
        print(f"{name}: evaluated in {time.perf_counter() - start:.0f} s; "
              + json.dumps({k: card.metrics.get(k) for k in ("clean_accuracy", "standard", "fast", "certified")
                            if k in card.metrics}), flush=True)
    return 0


def _remeasure(args: argparse.Namespace) -> int:
    from robustlab import zoo
    from robustlab.zoo.build import CARD_SETTINGS, remeasure

    for name in args.names:
        zoo.entry(name)
    for name in args.names:
        card = remeasure(name, tuple(args.suites), models_dir=args.out or zoo.MODELS_DIR, data_dir=args.data_dir,
                         workdir=args.workdir, settings=replace(CARD_SETTINGS, progress=not args.quiet))
        print(f"{name}: " + json.dumps({suite: card.metrics[suite] for suite in args.suites}), flush=True)
    return 0


def zoo_command(args: argparse.Namespace) -> int:
    if args.action in ("show", "train", "remeasure") and not args.names:
        raise RobustlabError(f"zoo {args.action} needs at least one model name (robustlab zoo list shows them)")
    return {"list": _list, "show": _show, "train": _train, "remeasure": _remeasure}[args.action](args)


def add_zoo_parser(sub) -> None:
    p = sub.add_parser("zoo", help="the model zoo: list it, show a card, train a model from its recipe",
                       description="Models trained by robustlab itself (robustlab.zoo). Use one anywhere a "
                                   "command takes --model with --model zoo:NAME.")
    p.add_argument("action", choices=["list", "show", "train", "remeasure"],
                   help="remeasure: run --suites again on published models and rewrite those entries of their cards")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--workdir", default="zoo-runs",
                   help="train: working folder for the runs' checkpoints and evaluation states (default zoo-runs)")
    p.add_argument("--out", help="train, remeasure: where the weights and cards are written (default: the package's zoo)")
    p.add_argument("--images", type=int, help="train: test images for the suites (default: the catalog's, 1000)")
    p.add_argument("--threads", type=int, help="train: torch threads (default: torch's)")
    p.add_argument("--data-dir", help="directory holding the datasets (else $ROBUSTLAB_DATA, ...)")
    p.add_argument("--markdown", action="store_true", help="list: the table in Markdown")
    p.add_argument("--suites", nargs="+", default=["fast"], help="remeasure: the suites to run again (default fast)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=zoo_command)
