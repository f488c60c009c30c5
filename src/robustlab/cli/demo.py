"""``robustlab demo``: train a small model on scikit-learn digits, attack it, write a report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from robustlab.cli.options import check_out_folder
from robustlab.cli.tables import accuracy_rows, print_table


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="train a small model on scikit-learn digits, attack it, write a report (< 2 min)")
    p.add_argument("--out", default="demo-report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from robustlab.demo import run_demo

    check_out_folder(args.out)
    start = time.perf_counter()
    summary = run_demo(Path(args.out), seed=args.seed, progress=not args.quiet)
    ev = summary["evaluation"]
    print(f"\nrobustlab demo: {summary['model']} on scikit-learn digits (8x8), {ev.metrics['samples']} test images, {ev.threat}")
    print_table(accuracy_rows(ev.metrics), ("accuracy", "value   [95% CI]"))
    print(f"\nreport folder: {args.out}/ (model, evaluation.json, report.md, report.html, grid.png); {time.perf_counter() - start:.1f} s")
    return 0
