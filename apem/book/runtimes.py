"""How long each chapter took to execute, read from the executed notebooks; a Sphinx directive that shows it.

papermill records every executed notebook's wall time in its metadata
(``metadata.papermill.duration``, seconds) and ``apem book`` adds the parameter set
and the outcome (``metadata.apem``). :func:`chapter_runtimes` reads them from
``book/chapters/*.ipynb``; :func:`runtime_markdown` makes the table the page
*Teaching with this book* shows.

The page shows it through the directive ``apem-runtimes`` (this module is a Sphinx
extension, loaded by ``_config.yml``'s ``sphinx.local_extensions``). The table is built
when the HTML is built, from the notebooks that build renders, so it always gives the
times of the chapters on the page; the directive declares the notebooks as
dependencies, so the page is re-read whenever a chapter was executed again.
Only the standard library is used: the HTML build imports this module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_NUM = re.compile(r"^(\d\d)_")


def _title(nb: dict) -> str:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            src = "".join(cell.get("source", []))
            for line in src.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def chapter_runtimes(folder: str | Path) -> list[dict]:
    """One dict per executed chapter in ``folder``, in chapter order.

    Keys: ``chapter`` (its number), ``stem``, ``title`` (its first ``# `` heading),
    ``params`` (the parameter set it ran on, ``""`` if unknown), ``status`` (``apem book``'s
    outcome: executed, not computed, failed; ``""`` if unknown), ``seconds`` (papermill's
    duration, None when the notebook was not executed by papermill) and ``end_time``.
    Unreadable files are skipped.
    """
    out = []
    for p in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")):
        try:
            nb = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        meta = nb.get("metadata", {})
        pm, ap = meta.get("papermill", {}) or {}, meta.get("apem", {}) or {}
        dur = pm.get("duration")
        out.append({"chapter": int(_NUM.match(p.name).group(1)), "stem": p.stem, "title": _title(nb),
                    "params": ap.get("params") or (pm.get("parameters") or {}).get("params") or "",
                    "status": ap.get("status", ""), "seconds": None if dur is None else float(dur),
                    "end_time": pm.get("end_time") or ""})
    return out


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 90:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min"


def runtime_markdown(rows: list[dict]) -> str:
    """The runtime table (Markdown): chapter, parameter set, outcome, time, and the total of the timed ones."""
    if not rows:
        return ("*No executed chapters were found when this page was built: run `apem book` first; the times "
                "appear here.*")
    lines = ["| chapter | parameter set | outcome | executed in |", "| --- | --- | --- | ---: |"]
    for r in rows:
        lines.append(f"| {r['title'] or r['stem']} | `{r['params'] or '?'}` | {r['status'] or '–'} | "
                     f"{_fmt_seconds(r['seconds'])} |")
    timed = [r["seconds"] for r in rows if r["seconds"] is not None]
    lines.append(f"| **all {len(timed)} timed chapters** | | | **{_fmt_seconds(sum(timed))}** |")
    sets = sorted({r["params"] for r in rows if r["params"]})
    ends = sorted(r["end_time"][:10] for r in rows if r["end_time"])
    lines += ["", f"*Measured by papermill while `apem book` executed each chapter (its `papermill.duration`), "
              f"on the machine that built this book, with the parameter set{'s' if len(sets) != 1 else ''} "
              f"{', '.join(f'`{s}`' for s in sets) or 'shown'}"
              + (f", between {ends[0]} and {ends[-1]}" if ends and ends[0] != ends[-1] else
                 f", on {ends[0]}" if ends else "")
              + ". A chapter that was up to date keeps the time of its last execution. The times exclude "
              "the shared run that computes the maps and epsilons before the first chapter.*"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the Sphinx directive


def add_notebook_directive(app, name: str, markdown) -> None:
    """Register a directive ``name`` whose content is ``markdown(folder)``: Markdown made from the executed
    chapters in ``book/chapters/`` under the source folder, which it declares as dependencies (the page is
    re-read whenever a chapter was executed again). The coverage page's directive is made the same way."""
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    class NotebookDirective(SphinxDirective):
        has_content = False

        def run(self):
            folder = Path(self.env.srcdir) / "book" / "chapters"
            for p in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
                self.env.note_dependency(str(p))
            container = nodes.container()
            self.state.nested_parse(StringList(markdown(folder).splitlines(), source=name), self.content_offset,
                                    container)
            return container.children

    app.add_directive(name, NotebookDirective)


def setup(app):
    """Register the ``apem-runtimes`` directive (a Sphinx extension): the chapters' execution times."""
    add_notebook_directive(app, "apem-runtimes", lambda folder: runtime_markdown(chapter_runtimes(folder)))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
