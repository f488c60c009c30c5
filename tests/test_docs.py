"""The documentation: a page per registered attack and training method, every page in the nav,
every relative link and anchor resolves, the anchors the library's warnings link to exist, the
code examples run, and ``mkdocs build --strict`` passes where mkdocs is installed.

Naming rule: ``docs/attacks/<name>.md`` for every name in ``robustlab.attacks.ATTACKS`` and
``docs/defenses/<name>.md`` for every name in ``robustlab.training.METHODS``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import unquote

import pytest

from robustlab.attacks import ATTACKS, AttackResult
from robustlab.evaluation.diagnostics import CHECKS
from robustlab.training import METHODS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
COMPOSITION_PAGES = ("attacks/eot.md", "attacks/bpda.md", "attacks/transfer.md", "attacks/reparameterization.md")
# The page whose first Python block defines `model`, `x`, `y`, ... for the other pages' snippets.
SETUP_PAGE = "attacks/index.md"
# Pages whose snippets are self-contained (they build their own model).
SELF_CONTAINED = ("index.md",)
# The first Python block of these pages also runs before the snippets of the pages beside them.
PRELUDES = {"defenses/": "defenses/index.md"}

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_PYTHON = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _text(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def _slug(heading: str) -> str:
    """The id mkdocs' ``toc`` extension gives a heading (its default ``slugify``)."""
    text = re.sub(r"[`*_]", "", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading))
    text = re.sub(r"[^\w\s-]", "", text.lower(), flags=re.UNICODE).strip()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: str) -> set[str]:
    body = _FENCE.sub("", _text(page))
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", body, re.M)}


def _nav_pages() -> list[str]:
    return re.findall(r":\s*([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)


def test_every_registered_attack_and_training_method_has_a_page():
    missing = [f"attacks/{name}.md" for name in ATTACKS if f"attacks/{name}.md" not in PAGES]
    missing += [f"defenses/{name}.md" for name in METHODS if f"defenses/{name}.md" not in PAGES]
    missing += [page for page in COMPOSITION_PAGES if page not in PAGES]
    assert not missing, f"pages missing: {missing}"
    for name in ATTACKS:  # a page names its attack and states its cost, in forwards and backwards
        text = _text(f"attacks/{name}.md")
        assert text.startswith(f"# {name}:") and "Cost" in text and "forward" in text, name
    for name in METHODS:
        text = _text(f"defenses/{name}.md")
        assert text.startswith(f"# {name}:") and "Cost" in text, name


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = _nav_pages()
    assert len(nav) == len(set(nav)), "a page is listed twice in mkdocs.yml"
    assert sorted(nav) == PAGES, {"not in nav": sorted(set(PAGES) - set(nav)),
                                  "no such page": sorted(set(nav) - set(PAGES))}


def test_relative_links_and_anchors_resolve():
    broken = []
    for page in PAGES:
        for target in _LINK.findall(_FENCE.sub("", _text(page))):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (DOCS / page).parent / unquote(path) if path else DOCS / page
            try:
                linked = resolved.resolve().relative_to(DOCS.resolve()).as_posix()
            except ValueError:
                broken.append(f"{page}: {target} (outside docs/)")
                continue
            if linked not in PAGES:
                broken.append(f"{page}: {target} (no such page)")
            elif anchor and anchor not in _anchors(linked):
                broken.append(f"{page}: {target} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_the_anchor_rule_matches_real_headings():
    assert _slug("Fixed-budget and minimum-norm attacks") == "fixed-budget-and-minimum-norm-attacks"
    assert (_slug("ModelOracle: counting forward and backward passes")
            == "modeloracle-counting-forward-and-backward-passes")
    assert _slug("`certify`") == "certify"
    assert "fixed-budget-and-minimum-norm-attacks" in _anchors("concepts/attack-contract.md")


def test_every_docs_pointer_in_the_source_resolves_to_a_shipped_page_and_section():
    """Every ``docs_pointer(page, anchor)`` written in the source (warnings, errors, findings),
    every diagnostics check (``docs_pointer("diagnostics", check)``) and every
    ``robustlab docs PAGE#anchor`` in the source names a page and a heading that exist in the
    documentation shipped with the package; and nothing links to an unpublished website."""
    from robustlab.documentation import anchors, docs_dir, list_pages

    source = {p: p.read_text(encoding="utf-8") for p in (ROOT / "src" / "robustlab").rglob("*.py")}
    pointers = set()
    for text in source.values():
        pointers |= {(page, anchor or None) for page, anchor in re.findall(
            r"docs_pointer\(\s*[\"']([\w/-]+)[\"'](?:\s*,\s*[\"']([\w-]+)[\"'])?\s*\)", text)}
        pointers |= {(page, anchor or None) for page, anchor in re.findall(r"robustlab docs ([a-z][\w/-]*)(?:#([\w-]+))?", text)}
    assert {("diagnostics", "probabilities"), ("diagnostics", "distance-mismatch"), ("diagnostics", "eot")} <= pointers
    pointers |= {("diagnostics", check) for check in CHECKS}
    pages = set(list_pages())
    for page, anchor in sorted(pointers, key=str):
        assert page in pages, f"a pointer names the page {page!r}, which is not in {docs_dir()}"
        assert anchor is None or anchor in anchors(page), f"{page}.md has no section #{anchor}"
    for path, text in {**source, ROOT / "mkdocs.yml": (ROOT / "mkdocs.yml").read_text()}.items():
        assert "readthedocs.io" not in text and "DOCS}/" not in text, f"{path} links to a website that does not exist"


def test_results_page_links_every_results_file():
    results = _text("results.md")
    for page in PAGES:
        if page.startswith("results/"):
            assert f"]({page})" in results, f"results.md does not link {page}"


@pytest.fixture(scope="module")
def snippet_namespace() -> dict:
    (setup,) = _PYTHON.findall(_text(SETUP_PAGE))[:1]
    namespace: dict = {"__name__": "docs_snippets"}
    exec(compile(setup, SETUP_PAGE, "exec"), namespace)
    return namespace


def _snippet_pages() -> list[str]:
    return [page for page in PAGES if _PYTHON.search(_text(page))]


@pytest.mark.parametrize("page", _snippet_pages())
def test_code_examples_run(page, snippet_namespace, tmp_path, monkeypatch):
    """Each page's Python blocks run in order in one namespace (after the shared setup)."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_snippets"} if page in SELF_CONTAINED else dict(snippet_namespace)
    blocks = _PYTHON.findall(_text(page))
    if page == SETUP_PAGE:
        blocks = blocks[1:]
    for folder, prelude in PRELUDES.items():
        if page.startswith(folder) and page != prelude:
            blocks = _PYTHON.findall(_text(prelude))[:1] + blocks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the probability or single-draw warnings a page demonstrates
        for i, block in enumerate(blocks):
            exec(compile(block, f"{page} (block {i + 1})", "exec"), namespace)
    if page.startswith("attacks/") and page != SETUP_PAGE:
        results = [v for k, v in namespace.items() if isinstance(v, AttackResult) and k not in snippet_namespace]
        assert results and all(len(r) > 0 for r in results), f"{page}'s example should run its attack"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "diagnostics" / "index.html").is_file()
