"""The thesis, statement by statement: which claim of which chapter decides each, and its verdict on this build.

Every verdict table (:class:`apem.claims.Claims`) records, in its output's metadata under
``"apem_claims"``, each claim's thesis statements (its ``ref``: keys of
:data:`apem.thesis.STATEMENTS`), text, source and verdict. :func:`verdicts_by_statement`
reads them back from the executed chapters ``book/chapters/*.ipynb``;
:func:`coverage_markdown` joins them with the registry into the table the appendix page
shows: statement, section, chapter, the claims that test it and their verdicts, or why
no data of ours can test it. :func:`missing` lists the statements a build leaves without
a verdict (the book's tests require none).

The page shows the table through the directive ``apem-coverage`` (a Sphinx extension, loaded by
``_config.yml`` like :mod:`apem.book.runtimes`): it is built when the HTML is built, from the
notebooks that build renders, so the verdicts are those on the pages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_NUM = re.compile(r"^(\d\d)_")
_BADGE = {"held": "✅ held", "not held": "❌ not held", "inconclusive": "➖ inconclusive",
          "not applicable": "⚪ not applicable"}


def claims_meta(output: dict) -> dict | None:
    """The ``apem_claims`` record of one output: at the top of its metadata (``display(..., metadata=)``),
    or under a MIME type (a ``_repr_markdown_`` that returns ``(data, metadata)``)."""
    meta = output.get("metadata") or {}
    if "apem_claims" in meta:
        return meta["apem_claims"]
    for v in meta.values():
        if isinstance(v, dict) and "apem_claims" in v:
            return v["apem_claims"]
    return None


def verdicts_by_statement(folder: str | Path) -> dict[str, list[dict]]:
    """``{statement key: [{"chapter", "stem", "family", "text", "source", "verdict", "reason"}, ...]}`` from the
    executed chapters in ``folder``.

    A chapter may decide the same claims more than once (e.g. again with the censored searches searched at a
    higher bound); the first verdict table of a chapter that names a statement is the chapter's verdict on it,
    the one its page states first. Unreadable notebooks are skipped.
    """
    out: dict[str, list[dict]] = {}
    for p in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")):
        try:
            nb = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        seen: set[str] = set()
        for cell in nb.get("cells", []):
            for o in cell.get("outputs", []) or []:
                rec = claims_meta(o)
                if not rec:
                    continue
                found = set()
                for c in rec.get("claims", []):
                    for key in c.get("refs", []):
                        if key in seen:
                            continue
                        found.add(key)
                        out.setdefault(key, []).append(
                            {"chapter": int(_NUM.match(p.name).group(1)), "stem": p.stem,
                             "family": rec.get("title", ""), "text": c.get("text", ""),
                             "source": c.get("source", ""), "verdict": c.get("verdict", ""),
                             "reason": c.get("reason", "")})
                seen |= found
    return out


def missing(statements, found: dict) -> list:
    """The statements a chapter should decide but no executed chapter gave a verdict on."""
    return [s for s in statements if s.chapter is not None and not found.get(s.key)]


def _are(n: int, verb: str = "are") -> str:
    """The verb agreeing with a count: "is"/"are", "has"/"have"; "cannot" either way."""
    return {"are": "is", "have": "has"}.get(verb, verb) if n == 1 else verb


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def coverage_markdown(statements, found: dict) -> str:
    """The coverage table (Markdown) and a count of the verdicts, from the registry and :func:`verdicts_by_statement`."""
    lines = ["| # | thesis statement | section | chapter | claim on this build | verdict |",
             "| ---: | --- | --- | --- | --- | --- |"]
    claimed: dict[tuple, str] = {}
    untestable = without = 0
    for i, s in enumerate(statements, 1):
        rows = found.get(s.key, [])
        if s.chapter is None:
            untestable += 1
            lines.append(f"| {i} | {_cell(s.text)} | {s.section} | – | not testable here: {_cell(s.reason)} | – |")
            continue
        if not rows:
            without += 1
            lines.append(f"| {i} | {_cell(s.text)} | {s.section} | {s.chapter} | *no verdict on this build: "
                         f"chapter {s.chapter} was not executed, or declares no claim on it* | – |")
            continue
        for r in rows:  # a claim that tests several statements counts once
            claimed[(r["chapter"], r["family"], r["text"])] = r["verdict"]
        chapter = ", ".join(dict.fromkeys(f"[{r['chapter']}](chapters/{r['stem']})" for r in rows))
        claim = "; ".join(_cell(r["text"]) + (f" ({_cell(r['reason'])})" if r["reason"] else "") for r in rows)
        verdict = "; ".join(_BADGE.get(r["verdict"], r["verdict"]) for r in rows)
        lines.append(f"| {i} | {_cell(s.text)} | {s.section} | {chapter} | {claim} | {verdict} |")
    tally = {v: sum(verdict == v for verdict in claimed.values()) for v in _BADGE}
    n_claims = len(claimed)
    tested = len(statements) - untestable - without
    summary = (f"*Of the thesis's {len(statements)} statements, {tested} {_are(tested)} tested by {n_claims} "
               f"claim{'s' if n_claims != 1 else ''} of the chapters, with these verdicts on this build "
               f"({', '.join(f'{k} {v}' for k, v in tally.items() if v) or 'none'}); {untestable} "
               f"{_are(untestable, 'cannot')} be tested on our data (the reason is in the table)"
               + (f", and {without} {_are(without, 'have')} no verdict on this build" if without else "") + ".*")
    return "\n".join([summary, "", *lines])


# ----------------------------------------------------------------------------- the Sphinx directive


def setup(app):
    """Register the ``apem-coverage`` directive (a Sphinx extension): the thesis's statements and their verdicts."""
    from apem.book.runtimes import add_notebook_directive
    from apem.thesis import STATEMENTS

    add_notebook_directive(app, "apem-coverage",
                           lambda folder: coverage_markdown(STATEMENTS, verdicts_by_statement(folder)))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
