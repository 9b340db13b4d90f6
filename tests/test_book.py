"""The book on the smoke parameters: every page executed by papermill, figures, offline HTML.

The smoke book is built once per test session into a temporary folder (the
developer's own ``book/chapters`` and ``_build`` are left alone).
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from apem.book import build, chapters

REPO = Path(__file__).resolve().parents[1]


def toc_files() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory, smoke_results):
    root = tmp_path_factory.mktemp("smokebook")
    build("smoke", root=root, progress=False, results_root=smoke_results)
    return root


def test_every_chapter_notebook_is_in_the_toc():
    files = toc_files()
    for nb in chapters():
        assert f"book/chapters/{nb.stem}" in files, f"{nb.name} is not in _toc.yml"
    for f in files:
        if not f.startswith("book/chapters/"):
            assert (REPO / f"{f}.md").exists(), f


def test_every_chapter_has_a_parameters_cell():
    import jupytext

    for p in chapters():
        nb = jupytext.read(p)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{p.name}: needs exactly one cell tagged 'parameters'"
        assert "params" in tagged[0].source and "overrides" in tagged[0].source


def test_every_toc_page_was_executed_by_papermill_with_outputs_and_figures(smoke_book):
    for f in toc_files():
        if not f.startswith("book/chapters/"):
            continue
        nb = json.loads((smoke_book / f"{f}.ipynb").read_text())
        assert "papermill" in nb["metadata"], f"{f} was not executed by papermill"
        assert nb["metadata"]["papermill"]["parameters"]["params"] == "smoke"
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code and all(c.get("execution_count") for c in code), f"{f}: a code cell did not run"
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in code), f
        outputs = [o for c in code for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], f
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{f} shows no figure"
        md = json.dumps(outputs)
        assert "held" in md or "inconclusive" in md or "not applicable" in md, f"{f} gives no verdict on the claims"
        assert "Rules, declared before the data" in md, f"{f}: its verdicts do not print their rules"
        import nbformat

        from apem.book import noise

        assert noise(nbformat.reads(json.dumps(nb), as_version=4)) == [], f"{f}: noise on the page"


_EXTERNAL = re.compile(
    r"<(?:script|link|img|iframe|source|video|audio|embed)\b[^>]*?\b(?:src|href)\s*=\s*[\"']((?:https?:)?//[^\"']+)",
    re.I,
)
_CSS_URL = re.compile(r"url\(\s*[\"']?((?:https?:)?//[^)\"']+)", re.I)


def test_html_references_nothing_outside(smoke_book):
    html = smoke_book / "_build" / "html"
    pages = list(html.rglob("*.html"))
    assert len(pages) >= len(toc_files())
    bad = []
    for p in pages + list(html.rglob("*.css")):
        text = p.read_text(errors="ignore")
        bad += [(p.name, u) for u in _EXTERNAL.findall(text) + _CSS_URL.findall(text)]
    assert not bad, bad[:10]
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists()


def test_api_reference_is_built_with_its_source(smoke_book):
    """The API reference part (book/api/*.md, autodoc): every page built, each function with a [source] link
    to its module's code in the book (viewcode's ``_modules/`` pages), the docstrings' math typeset."""
    html = smoke_book / "_build" / "html"
    api = [f for f in toc_files() if f.startswith("book/api/")]
    assert "book/api/stats" in api and "book/api/claims" in api
    for f in api:
        assert (html / f"{f}.html").exists(), f"{f}: no API reference page"
    stats = (html / "book" / "api" / "stats.html").read_text(errors="ignore")
    assert 'id="apem.stats.summary_table"' in stats, "apem.stats.summary_table is not documented"
    assert "_modules/apem/stats.html#summary_table" in stats, "no [source] link (viewcode)"
    assert (html / "_modules" / "apem" / "stats.html").exists(), "viewcode wrote no _modules/ page"
    assert 'id="apem.claims.Paired"' in (html / "book" / "api" / "claims.html").read_text(errors="ignore")
    metric = (html / "book" / "api" / "metric.html").read_text(errors="ignore")
    assert 'class="math notranslate nohighlight"' in metric, "the docstrings' :math: is not typeset"


def test_the_coverage_page_gives_every_thesis_statement_a_verdict_or_a_reason(smoke_book):
    """The appendix table (apem-coverage): every statement a chapter tests has that chapter's verdict on this
    build, read from the executed notebooks, and the page renders it."""
    from apem.book import coverage
    from apem.thesis import STATEMENTS

    found = coverage.verdicts_by_statement(smoke_book / "book" / "chapters")
    assert not coverage.missing(STATEMENTS, found), [s.key for s in coverage.missing(STATEMENTS, found)]
    for s in STATEMENTS:
        for r in found.get(s.key, []):
            assert r["chapter"] == s.chapter and r["verdict"] in ("held", "not held", "inconclusive", "not applicable")
    page = (smoke_book / "_build" / "html" / "book" / "coverage.html").read_text(errors="ignore")
    assert "Of the thesis&#8217;s" in page or "Of the thesis's" in page or "Of the thesis’s" in page
    assert "no verdict on this build" not in page
    assert page.count("not testable here") == sum(s.chapter is None for s in STATEMENTS)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed")
def test_pages_render_in_headless_chromium(smoke_book, tmp_path):
    """Load the intro and chapter 3 offline, let MathJax typeset, check the DOM and take screenshots."""
    html = smoke_book / "_build" / "html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000"]
    intro = html / "book" / "intro.html"
    ch3 = next((html / "book" / "chapters").glob("03_*.html"))
    for page in (intro, ch3):
        dom = subprocess.run([_chromium(), *flags, "--dump-dom", page.as_uri()], capture_output=True,
                             text=True, timeout=120).stdout
        assert "<h1" in dom
        if page == intro:
            assert "mjx-container" in dom, "MathJax did not typeset the formulas offline"
        shot = tmp_path / f"{page.stem}.png"
        subprocess.run([_chromium(), *flags, "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, timeout=120)
        assert shot.exists() and shot.stat().st_size > 20_000, "blank screenshot"


def test_each_chapter_shows_what_it_ran_on(smoke_book):
    """The "Setting." line (model, images, methods) is on every results chapter's HTML page."""
    html = smoke_book / "_build" / "html" / "book" / "chapters"
    for page in sorted(html.glob("[0-9][0-9]_*.html")):
        if page.name.startswith("01_"):
            continue
        text = page.read_text(errors="ignore")
        assert "Setting." in text, f"{page.name} hides its setting"


def test_math_in_generated_markdown_is_typeset(smoke_book):
    """``display(Markdown("... $\\varepsilon^-$ ..."))`` becomes a math node, not literal dollars (_config.yml)."""
    html = smoke_book / "_build" / "html" / "book" / "chapters"
    literal = re.compile(r"\$\\[A-Za-z]")
    for page in sorted(html.glob("[0-9][0-9]_*.html")):
        text = re.sub(r"<script\b.*?</script>", "", page.read_text(errors="ignore"), flags=re.S)
        text = re.sub(r"<pre\b.*?</pre>", "", text, flags=re.S)  # code on the page may hold LaTeX strings
        assert not literal.search(text), f"{page.name}: untypeset math {literal.search(text).group(0)!r}"
    ch1 = next(html.glob("01_*.html")).read_text(errors="ignore")
    assert 'class="math notranslate nohighlight"' in ch1


_TERM = re.compile(r"\{term\}`([^`]+)`")


def glossary_terms() -> set[str]:
    """The terms of book/glossary.md's glossary directive: its unindented lines (several may share a definition)."""
    text = (REPO / "book" / "glossary.md").read_text()
    body = text.split("```{glossary}", 1)[1].split("\n```", 1)[0]
    return {line.strip().lower() for line in body.splitlines() if line.strip() and not line.startswith(" ")}


def test_every_term_a_page_links_is_in_the_glossary():
    """``{term}`text <target>``` or ``{term}`target``` in the chapters and pages: the target is a glossary term."""
    terms = glossary_terms()
    assert {"apem", "relevance map", "irrelevance map", "eps-minus", "eps-plus", "censoring", "apem_norm",
            "canonizer", "stage", "flip step", "search bound", "coarse-to-fine search", "bisect", "smoothgrad",
            "lrp"} <= terms
    pages = chapters() + [REPO / f"{f}.md" for f in toc_files() if not f.startswith("book/chapters/")]
    for p in pages:
        for ref in _TERM.findall(p.read_text()):
            target = ref.rsplit("<", 1)[1].rstrip(">").strip() if ref.endswith(">") else ref
            assert " ".join(target.split()).lower() in terms, f"{p.name}: {{term}}`{ref}` is not in the glossary"


def test_every_chapter_links_the_glossary_near_its_top():
    """Each chapter links at least one glossary term before its parameters cell (its introduction)."""
    for p in chapters():
        head = p.read_text().split(":tags: [parameters", 1)[0]
        assert _TERM.search(head), f"{p.name} links no glossary term in its introduction"
