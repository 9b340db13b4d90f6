"""What should not reach a reader of an executed chapter: :func:`noise` lists it, one line per finding.

The book's build (:mod:`apem.book`) runs it on every executed chapter and the tests on the smoke book.
"""

from __future__ import annotations

import re


_REPR = re.compile(r"<[\w.]+(?: object)? at 0x[0-9a-fA-F]+>|<Figure size [^>]*>|<[\w.]+ object>")
_NAN = re.compile(r"(?<![\w-])nan(?![\w-])")  # Python's and pandas' text for a missing number (prose says NaN)
_HTML_NAN = re.compile(r">\s*(?:nan|NaN)\s*<")
#: a character no page means to show: LaTeX eaten by a non-raw Python string ("\v" of "\varepsilon" is a
#: vertical tab, "\t" of "\text" a tab, "\f" of "\frac" a form feed, "\b" of "\beta" a backspace)
_CONTROL = re.compile(r"[\x07\x08\x0b\x0c]|\t(?=ext|imes|au|heta|ilde)")
#: a table cell pandas cut short ("..." at the end of a cell)
_TRUNCATED = re.compile(r"\.\.\.\s*</td>|…\s*</td>")
#: a number rounded to minus zero ("-0", "-0.00"), which reads as a sign error
_MINUS_ZERO = re.compile(r"(?<![\w\-.])[-−]0(?:\.0+)?(?![\d.\w])")
#: the mime types Jupyter Book shows before text/plain: with one of these, text/plain is a fallback no one sees
_RICH = ("text/html", "text/markdown", "text/latex", "image/png", "image/jpeg", "image/svg+xml",
         "application/javascript", "application/vnd.jupyter.widget-view+json")


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def noise(nb) -> list[str]:
    """What should not reach a reader in an executed chapter: warnings, object reprs, ``nan``, a figure twice,
    broken LaTeX, cut cells, ``-0``.

    Looks at every output: stderr streams (warnings, e.g. ``TqdmWarning: IProgress not
    found``); text/plain that is shown (no richer mime type came with it) and is an
    object's repr (``<... at 0x...>``, ``<Figure size ...>``, ``<... object>``) or holds
    ``nan``; ``nan`` in Markdown or in an HTML table's cell; the same image twice in
    one cell (a figure returned as the cell's value and shown again by the inline
    backend); a control character in shown text (LaTeX whose backslash a non-raw Python
    string ate); a table cell pandas cut short with ``...``; a number rounded to ``-0``.
    One line per finding, ``cell N: what``.
    """
    found = []
    for i, cell in enumerate(nb.cells):
        images = []
        for o in cell.get("outputs", []):
            kind = o.get("output_type")
            if kind == "stream" and o.get("name") == "stderr" and _text(o.get("text")).strip():
                found.append(f"cell {i}: stderr: {_text(o.get('text')).strip().splitlines()[0][:160]}")
            if kind not in ("execute_result", "display_data"):
                continue
            data = o.get("data", {})
            plain = _text(data.get("text/plain"))
            if not any(m in data for m in _RICH):
                if _REPR.search(plain):
                    found.append(f"cell {i}: object repr {plain.strip()[:80]!r}")
                elif _NAN.search(plain):
                    found.append(f"cell {i}: 'nan' in text/plain")
            if _NAN.search(_text(data.get("text/markdown"))):
                found.append(f"cell {i}: 'nan' in text/markdown")
            shown = _text(data.get("text/markdown")) + _text(data.get("text/html"))
            if not any(m in data for m in _RICH):
                shown += plain
            if _CONTROL.search(shown):
                found.append(f"cell {i}: a control character (LaTeX eaten by a non-raw string?)")
            if _TRUNCATED.search(_text(data.get("text/html"))):
                found.append(f"cell {i}: a table cell cut short with '...'")
            if _MINUS_ZERO.search(shown):
                found.append(f"cell {i}: a number rounded to -0")
            if _HTML_NAN.search(_text(data.get("text/html"))):
                found.append(f"cell {i}: 'nan' in a table")
            png = _text(data.get("image/png"))
            if png and png in images:
                found.append(f"cell {i}: the same figure twice (a Figure returned as the cell's value is shown again)")
            images.append(png)
    return found
