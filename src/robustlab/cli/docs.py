"""``robustlab docs [PAGE[#SECTION]]``: the documentation shipped with robustlab."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "docs", help="read the documentation shipped with robustlab: a page, or one of its sections",
        description="Print a documentation page (robustlab docs diagnostics) or one section of it "
                    "(robustlab docs diagnostics#eot); without a page, list them. The pointers in "
                    "robustlab's warnings and reports are such arguments.")
    p.add_argument("page", nargs="?", metavar="PAGE[#SECTION]")
    p.add_argument("--serve", action="store_true", help="build the pages with mkdocs (if installed) and serve them on "
                                                        "localhost")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (0: any free port)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from robustlab import documentation

    if args.serve:
        site = documentation.build_site()
        server = documentation.serve_site(site, port=args.port)
        host, port = server.server_address[:2]
        print(f"serving the robustlab documentation at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
        return 0
    if not args.page:
        print("robustlab documentation pages (robustlab docs PAGE, or PAGE#section):")
        for page in documentation.list_pages():
            print(f"  {page}")
        return 0
    sys.stdout.write(documentation.read_page(args.page))
    return 0
