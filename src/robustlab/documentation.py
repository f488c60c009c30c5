"""The documentation shipped with robustlab, read where the user is.

The Markdown pages of ``docs/`` are package data (``robustlab/_docs``), so every pointer in a
warning, a diagnostic or an error, written as :func:`docs_pointer` gives it
(``robustlab docs diagnostics#eot``), leads to a page that exists on the user's machine:
``robustlab docs PAGE[#anchor]`` prints the page (or only the section under that heading),
``robustlab docs`` lists the pages, and ``robustlab docs --serve`` builds the pages with mkdocs
(when installed) and serves the site on localhost.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from robustlab.errors import RobustlabError

__all__ = ["build_site", "docs_dir", "docs_pointer", "list_pages", "read_page", "serve_site", "slug"]

_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def docs_pointer(page: str, anchor: str | None = None) -> str:
    """How a message points to documentation: ``robustlab docs PAGE#anchor`` (``page`` without
    ``.md``, e.g. ``"diagnostics"``, ``"attacks/pgd"``). Tests check that every pointer in the
    source names an existing page and heading."""
    return f"robustlab docs {page}{'#' + anchor if anchor else ''}"


def docs_dir() -> Path:
    """The folder holding the shipped pages (the package's ``_docs``; in a source checkout, the
    repository's ``docs/`` it links to)."""
    shipped = Path(__file__).resolve().parent / "_docs"
    if (shipped / "index.md").is_file():
        return shipped
    checkout = Path(__file__).resolve().parents[2] / "docs"
    if (checkout / "index.md").is_file():
        return checkout
    raise RobustlabError(f"the documentation is not installed ({shipped} has no pages); reinstall robustlab")


def list_pages() -> list[str]:
    """Page names (``"diagnostics"``, ``"attacks/pgd"``), sorted."""
    root = docs_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.md"))


def slug(heading: str) -> str:
    """The anchor mkdocs' ``toc`` extension gives a heading (its default ``slugify``)."""
    text = re.sub(r"[`*_]", "", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading))
    text = re.sub(r"[^\w\s-]", "", text.lower(), flags=re.UNICODE).strip()
    return re.sub(r"[-\s]+", "-", text)


def _headings(text: str) -> list[tuple[int, int, str]]:
    """``(offset, level, anchor)`` of each heading outside code blocks."""
    masked = _FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return [(m.start(), len(m.group(1)), slug(m.group(2))) for m in _HEADING.finditer(masked)]


def anchors(page: str) -> set[str]:
    """The anchors of ``page``'s headings."""
    return {anchor for _, _, anchor in _headings(read_page(page))}


def read_page(target: str) -> str:
    """The Markdown of ``PAGE`` or, for ``PAGE#anchor``, of the section under that heading (up
    to the next heading of the same or a higher level). Unknown pages and anchors are
    RobustlabErrors listing what exists."""
    page, _, anchor = target.strip().partition("#")
    page = page.strip("/").removesuffix(".md") or "index"
    path = docs_dir() / f"{page}.md"
    if not path.is_file():
        near = [p for p in list_pages() if page.split("/")[-1] in p] or list_pages()
        raise RobustlabError(f"no documentation page {page!r}; pages: {', '.join(near)}")
    text = path.read_text(encoding="utf-8")
    if not anchor:
        return text
    headings = _headings(text)
    for i, (start, level, name) in enumerate(headings):
        if name == anchor:
            end = next((s for s, lv, _ in headings[i + 1:] if lv <= level), len(text))
            return text[start:end].rstrip() + "\n"
    raise RobustlabError(f"page {page!r} has no section {anchor!r}; its sections: "
                         f"{', '.join(name for _, _, name in headings)}")


def build_site(out: str | Path | None = None) -> Path:
    """Build the shipped pages into a static site with mkdocs (``mkdocs`` must be installed);
    returns the site folder."""
    try:
        from mkdocs.commands.build import build
        from mkdocs.config import load_config
    except ImportError:
        raise RobustlabError("robustlab docs --serve needs mkdocs (pip install mkdocs); without it, read the pages "
                             "with robustlab docs PAGE") from None
    site = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="robustlab-docs-"))
    config_file = site.parent / f"{site.name}-mkdocs.yml"
    config_file.write_text(f"site_name: robustlab\ndocs_dir: {docs_dir()}\nsite_dir: {site}\n"
                           "markdown_extensions:\n  - toc:\n      permalink: true\n  - tables\n  - fenced_code\n"
                           "  - admonition\n", encoding="utf-8")
    import logging

    logging.getLogger("mkdocs").setLevel(logging.ERROR)
    build(load_config(str(config_file)))
    return site


def serve_site(site: str | Path, *, port: int = 8000, host: str = "127.0.0.1"):
    """An HTTP server (not yet serving: call ``serve_forever``) for the built ``site`` on
    ``host:port`` (localhost by default; port 0 picks a free one)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:
            pass

    try:
        return ThreadingHTTPServer((host, port), functools.partial(Quiet, directory=str(site)))
    except OSError as exc:
        raise RobustlabError(f"cannot serve the documentation on {host}:{port}: {exc}; try --port 0") from None
