"""``robustlab report RUN [RUN ...] --out FILE``: one HTML page (or Markdown) from run folders."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustlab.cli.options import check_out_folder
from robustlab.errors import RobustlabError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "report", help="one self-contained HTML page (or Markdown) from run folders",
        description="Build a report from the outputs of evaluate, attack, certify and train: "
                    "each RUN is a folder holding them (or one such file). Sections appear for "
                    "whatever the runs hold.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder or output file")
    p.add_argument("--out", action="append", required=True,
                   help="report file: .html or .md (the suffix picks the format); repeat for both")
    p.add_argument("--title", default="robustlab report")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from robustlab.report.html import write_report

    for out in args.out:
        if Path(out).is_dir():
            raise RobustlabError(f"--out {out} is a folder; give a report file name ending in .html or .md")
        check_out_folder(Path(out).parent)
    for out in args.out:
        print(f"wrote {write_report(args.runs, out, title=args.title)}")
    return 0
