"""Run cells of a chapter's page on data a test makes: the claims a page declares, tested where the answer is known.

A chapter declares its claims on the page, in a cell tagged ``claims`` that reads the
data frames the cells above it selected (``C``, ``M``, ...) and defines the list
``chapter_claims``. :func:`run_cells` executes the tagged cells of the jupytext source
in a namespace the test fills, so a test checks the page's own declarations, not a copy.
"""

from __future__ import annotations

from pathlib import Path

import jupytext

from apem.book import find_chapter


def cells(chapter: int | str | Path, tag: str) -> list[str]:
    """The sources of the cells of ``chapter`` (a number, name or path) tagged ``tag``, in page order."""
    path = chapter if isinstance(chapter, Path) else find_chapter(chapter)
    nb = jupytext.read(path)
    out = [c.source for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]
    if not out:
        raise LookupError(f"{path.name} has no cell tagged {tag!r}")
    return out


def run_cells(chapter: int | str | Path, *tags: str, **namespace) -> dict:
    """Execute the cells tagged ``tags`` (each tag's cells in page order) in ``namespace``; return the namespace."""
    path = chapter if isinstance(chapter, Path) else find_chapter(chapter)
    ns = dict(namespace)
    for tag in tags:
        for i, src in enumerate(cells(path, tag)):
            exec(compile(src, f"{path.name}[{tag} {i}]", "exec"), ns)
    return ns
