"""The book's coverage of the thesis: every statement in apem.thesis.STATEMENTS is tested by a chapter's claim
or says why it cannot be, the verdict tables record what they decide, and the appendix table reads it back."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from apem import claims, thesis
from apem.book import coverage

REPO = Path(__file__).resolve().parents[1]


def notebook_text(chapter: int) -> str:
    (path,) = REPO.glob(f"notebooks/{chapter:02d}_*.md")
    return path.read_text()


def declared_refs(text: str) -> set[str]:
    """The statement keys a notebook's claims name: every string literal inside a ``ref=`` argument."""
    out = set()
    for m in re.finditer(r"ref=(\([^)]*\)|\"[^\"]*\"|'[^']*')", text):
        out |= set(re.findall(r"[\"']([^\"']+)[\"']", m.group(1)))
    return out


def test_every_statement_is_tested_by_its_chapter_or_says_why_not():
    keys = [s.key for s in thesis.STATEMENTS]
    assert len(keys) == len(set(keys)), "a statement key is used twice"
    for s in thesis.STATEMENTS:
        assert re.fullmatch(r"[3-6](\.\d)?[ab]?(-[a-z0-9.]+)+", s.key), s.key
        assert s.section.split(",")[0].split(".")[0] == s.key.split("-")[0].split(".")[0].rstrip("ab"), s.key
        if s.chapter is None:
            assert len(s.reason) > 20, f"{s.key}: a statement no chapter tests must say why"
        else:
            assert s.key in declared_refs(notebook_text(s.chapter)), (
                f"{s.key} ({s.section}) is assigned to chapter {s.chapter}, whose notebook declares no claim "
                f"with ref={s.key!r}")


def test_every_ref_in_a_chapter_is_a_statement_of_that_chapter():
    known = {s.key: s for s in thesis.STATEMENTS}
    for path in sorted(REPO.glob("notebooks/[0-9][0-9]_*.md")):
        chapter = int(path.name[:2])
        for key in declared_refs(path.read_text()):
            assert key in known, f"{path.name}: ref={key!r} is not in apem.thesis.STATEMENTS"
            assert known[key].chapter == chapter, f"{path.name}: {key} is registered to chapter {known[key].chapter}"


def test_a_statement_has_a_chapter_or_a_reason_never_both():
    with pytest.raises(ValueError, match="chapter that tests it or a reason"):
        thesis.Statement("3.1-x", "3.1", "text", None)
    with pytest.raises(ValueError, match="chapter that tests it or a reason"):
        thesis.Statement("3.1-x", "3.1", "text", 3, "and a reason")
    with pytest.raises(KeyError, match="not a thesis statement"):
        thesis.statement("9.9-nothing")
    assert thesis.statement("3.1-gap").chapter == 3


def family(verdict_for: float):
    """A family of two claims: one naming a statement (held when the values are all positive), one naming none."""
    values = pd.Series([verdict_for] * 12, index=[f"i{k}" for k in range(12)])
    return claims.Claims([
        claims.Location("APEM is above 0", values=values, ref="3.1-gap"),
        claims.Location("Ours, naming no statement", values=values, source=claims.OURS),
    ], title="A family")


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_claims_reject_an_unknown_statement_and_record_their_refs_and_verdicts():
    with pytest.raises(ValueError, match="unknown thesis statement"):
        claims.Claims([claims.Location("x", values=pd.Series([1.0, 2.0]), ref="3.1-no-such")])
    fam = family(1.0)
    meta = fam.metadata()["apem_claims"]
    assert meta["title"] == "A family"
    assert [c["refs"] for c in meta["claims"]] == [["3.1-gap"], []]
    assert [c["verdict"] for c in meta["claims"]] == ["held", "held"]
    data, md = fam._repr_markdown_()
    assert md == fam.metadata() and "APEM is above 0" in data
    assert claims.Location("x", values=[1.0], ref=("3.1-gap", "6-random-zero")).refs() == ("3.1-gap", "6-random-zero")


def write_chapter(folder, stem, *families, as_repr=False):
    outputs = []
    for fam in families:
        data, meta = fam._repr_markdown_()
        if as_repr:  # an execute_result: IPython nests a _repr_*_'s metadata under its MIME type
            outputs.append(nbformat.v4.new_output("execute_result", data={"text/markdown": data},
                                                  metadata={"text/markdown": meta}, execution_count=1))
        else:  # display(Markdown(...), metadata=...): the metadata at the top
            outputs.append(nbformat.v4.new_output("display_data", data={"text/markdown": data}, metadata=meta))
    cell = nbformat.v4.new_code_cell("verdicts", outputs=outputs)
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), folder / f"{stem}.ipynb")


@pytest.mark.slow  # over 3 s: left out of `make test-fast`
def test_the_table_reads_each_chapters_first_verdict_and_marks_the_untestable(tmp_path):
    write_chapter(tmp_path, "03_apem_results", family(1.0), family(-1.0))  # the second (a re-decision) is ignored
    write_chapter(tmp_path, "07_random", family(-1.0), as_repr=True)  # another chapter naming it counts too
    (tmp_path / "08_broken.ipynb").write_text("{not json")
    found = coverage.verdicts_by_statement(tmp_path)
    assert list(found) == ["3.1-gap"]
    assert [(r["chapter"], r["verdict"]) for r in found["3.1-gap"]] == [(3, "held"), (7, "not held")]
    statements = [thesis.statement("3.1-gap"), thesis.statement("4.3-focus-differs"), thesis.statement("5.3-eps-lower")]
    assert [s.key for s in coverage.missing(statements, found)] == ["5.3-eps-lower"]
    md = coverage.coverage_markdown(statements, found)
    assert "| 1 | " in md and "[3](chapters/03_apem_results), [7](chapters/07_random)" in md
    assert "✅ held; ❌ not held" in md
    assert f"not testable here: {thesis.statement('4.3-focus-differs').reason}" in md
    assert "*no verdict on this build" in md
    assert "Of the thesis's 3 statements, 1 is tested by 2 claims of the chapters" in md
    assert "(held 1, not held 1); 1 cannot be tested on our data" in md and "1 has no verdict on this build" in md
    # a claim naming two statements is one claim in the count
    two = [thesis.statement("5.2-shuffle-zero"), thesis.statement("6-random-zero")]
    row = {"chapter": 7, "stem": "07_random", "family": "A family", "text": "Shuffled maps score 0", "source": "thesis",
           "verdict": "inconclusive", "reason": ""}
    md = coverage.coverage_markdown(two, {"5.2-shuffle-zero": [row], "6-random-zero": [row]})
    assert "2 are tested by 1 claim of the chapters, with these verdicts on this build (inconclusive 1)" in md
