"""``robustlab reproduce NAME``: a published table at CPU scale (``--list`` shows them)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustlab.cli.loading import device
from robustlab.cli.options import check_out_folder, positive_int


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from robustlab.reproduce import REPRODUCTIONS

    p: argparse.ArgumentParser = sub.add_parser("reproduce", help="reproduce a published table at CPU scale (--list shows them)")
    p.add_argument("name", nargs="?", help=f"one of {', '.join(REPRODUCTIONS.names())}; omit with --list")
    p.add_argument("--list", action="store_true", help="list the reproductions and their budgets")
    p.add_argument("--images", type=positive_int, help="number of test images (default: the reproduction's CPU default)")
    p.add_argument("--data-dir", help="directory holding the datasets (else $ROBUSTLAB_DATA, the cache, system dirs)")
    p.add_argument("--out", default="reproduce", help="folder for NAME.json and NAME.md")
    p.add_argument("--full", action="store_true", help="the paper's settings (needs a GPU and hours)")
    p.add_argument("--cache-dir", help="where trained models are cached (default: <user cache>/reproduce)")
    p.add_argument("--retrain", action="store_true",
                   help="rebuild the zoo models the reproduction attacks from their recipes (cached) instead of "
                        "loading the shipped weights")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: rows that need a model neither shipped nor cached are reported as not run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from robustlab.reproduce import REPRODUCTIONS, ReproOptions, run_reproduction

    if args.list or not args.name:
        for name, (description, budget, _) in REPRODUCTIONS.items():
            print(f"{name:<12} {description}\n{'':<12} budget: {budget}")
        return 0
    check_out_folder(args.out)
    options = ReproOptions(images=args.images, data_dir=args.data_dir, out=Path(args.out), full=args.full, seed=args.seed,
                           device=str(device(args.device)), progress=not args.quiet,
                           cache_dir=Path(args.cache_dir) if args.cache_dir else None, retrain=args.retrain,
                           train=not args.no_train)
    result = run_reproduction(args.name, options)
    print(result.markdown)
    print(f"wrote {result.json_path} and {result.markdown_path}")
    return 0
