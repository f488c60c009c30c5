"""``robustlab datasets {list,locate,fetch} [NAME]``: the datasets robustlab knows and where they are."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("datasets", help="list, locate or fetch datasets")
    p.add_argument("action", choices=["list", "locate", "fetch"])
    p.add_argument("name", nargs="?")
    p.add_argument("--data-dir", help="where to look (locate) or to download to (fetch)")
    p.add_argument("--base-url", help="download from this mirror instead of the official source")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from robustlab.data import DATASETS, fetch, locate, search_paths

    if args.action == "list":
        for name, info in DATASETS.items():
            where = locate(name, args.data_dir)
            status = "no download needed" if not info.needs_download else (str(where) if where else "not found")
            print(f"{name:<14} {info.description}  [{status}]")
        return 0
    if not args.name:
        raise RobustlabError(f"datasets {args.action} needs a dataset name: one of {sorted(DATASETS)}")
    if args.action == "locate":
        where = locate(args.name, args.data_dir)
        print(where or "not found; searched:\n  " + "\n  ".join(map(str, search_paths(args.name, args.data_dir))))
        return 0 if where or not DATASETS[args.name].needs_download else 1
    path = fetch(args.name, dest=Path(args.data_dir) if args.data_dir else None, base_url=args.base_url, progress=True)
    print(path)
    return 0
