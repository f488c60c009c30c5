"""The documentation where the user is: pages shipped with the package, `robustlab docs` prints
a page or one section, `robustlab docs --serve` serves the built site on localhost."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest

from robustlab.cli import main
from robustlab.documentation import docs_dir, list_pages, read_page

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_pages_are_the_docs_folder():
    assert docs_dir().resolve() == (ROOT / "docs").resolve()
    assert list_pages() == sorted(p.relative_to(ROOT / "docs").with_suffix("").as_posix()
                                  for p in (ROOT / "docs").rglob("*.md"))
    # Package data: the folder inside the package (a link to docs/) is what a wheel ships.
    package = ROOT / "src" / "robustlab" / "_docs"
    assert package.is_symlink() and (package / "diagnostics.md").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"_docs/*.md", "_docs/**/*.md"' in pyproject


def test_docs_prints_a_section_and_only_that_section(capsys):
    assert main(["docs", "diagnostics#eot"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("## eot") and printed == read_page("diagnostics#eot")
    whole = read_page("diagnostics")
    assert printed in whole and len(printed) < len(whole) / 3
    assert "## probabilities" not in printed


def test_docs_lists_pages_and_refuses_unknown_ones_clearly(capsys):
    assert main(["docs"]) == 0
    out = capsys.readouterr().out
    assert "diagnostics" in out and "attacks/pgd" in out
    assert main(["docs", "diagnostic"]) == 2
    assert "no documentation page 'diagnostic'; pages: diagnostics" in capsys.readouterr().err
    assert main(["docs", "diagnostics#nope"]) == 2
    assert "has no section 'nope'; its sections:" in capsys.readouterr().err


def test_serve_builds_the_site_and_serves_it_on_loopback(tmp_path):
    pytest.importorskip("mkdocs")
    from robustlab.documentation import build_site, serve_site

    site = build_site(tmp_path / "site")
    server = serve_site(site, port=0)
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/diagnostics/", timeout=30) as response:
            page = response.read().decode("utf-8")
        assert response.status == 200 and 'id="eot"' in page
    finally:
        server.shutdown()
        server.server_close()
