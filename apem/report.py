"""What a chapter shows: tables with the thesis's value beside ours, and verdicts on claims.

Chapters stay thin: they compute with :mod:`apem.stats`, then call these to
display. A verdict is always computed (see :mod:`apem.stats`), never typed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from apem.stats import HELD, INCONCLUSIVE, NOT_HELD
from apem.thesis import label

_BADGE = {HELD: "✅ held", NOT_HELD: "❌ did not hold", INCONCLUSIVE: "➖ inconclusive"}


@dataclass
class Claim:
    """One of the thesis's claims, its verdict on our data, and the evidence."""

    text: str
    verdict: str
    evidence: str = ""

    def __post_init__(self):
        if self.verdict not in _BADGE:
            raise ValueError(f"verdict must be one of {list(_BADGE)}, got {self.verdict!r}")


def show_claims(claims: list[Claim], title: str = "Did the thesis's claims hold on our model?") -> None:
    """Display the verdicts as a Markdown table."""
    from IPython.display import Markdown, display

    lines = [f"**{title}**", "", "| thesis's claim | on our model | evidence |", "| --- | --- | --- |"]
    for c in claims:
        lines.append(f"| {c.text} | {_BADGE[c.verdict]} | {c.evidence} |")
    held = sum(c.verdict == HELD for c in claims)
    lines += ["", f"{held} of {len(claims)} claims held; a claim is called held only when a confidence "
              "interval or a significance test (α = 0.05) supports it."]
    display(Markdown("\n".join(lines)))


def beside_thesis(ours: pd.DataFrame, thesis: pd.DataFrame, on: list[str], columns: list[str]) -> pd.DataFrame:
    """Our values and the thesis's side by side: columns ``(col, "ours")`` and ``(col, "thesis")``."""
    merged = ours.merge(thesis[on + columns], on=on, how="left", suffixes=("", "__thesis"))
    out = merged[on].copy()
    for c in columns:
        out[(c, "ours")] = merged[c]
        out[(c, "thesis")] = merged[f"{c}__thesis"]
    out = out.set_index(on)
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    if "method" in on:
        out = out.rename(index=label, level="method" if len(on) > 1 else None)
    return out


def fmt_ci(est: float, lo: float, hi: float, digits: int = 1) -> str:
    """``"12.3 [10.1, 14.0]"``."""
    if np.isnan(est):
        return "–"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def method_order(table: pd.DataFrame) -> list[str]:
    """Methods in the order of the configuration (first appearance in the table)."""
    return list(dict.fromkeys(table.method))


class NotComputed(Exception):
    """A chapter's study is switched off by the parameters (``apem book`` renders a short page)."""


def require(condition: bool, what: str, how: str = "") -> None:
    """Stop a chapter, with a note on the page, when the parameters switch its study off.

    ``what``: what is missing (e.g. "the explanation filter ran on 0 images");
    ``how``: the parameter that turns it on (e.g. "-p filter_images 2").
    """
    if condition:
        return
    from IPython.display import Markdown, display

    display(Markdown(f"**Not computed with these parameters.** {what}."
                     + (f" Re-run the chapter with `{how}` to compute it." if how else "")))
    raise NotComputed(what + (f" (use {how})" if how else ""))
