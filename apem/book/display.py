"""What a page shows: tables with the thesis's value beside ours, censoring in view, figures once.

The pages compute with :mod:`apem.stats` and decide with :mod:`apem.claims` in their own
cells, then call these to display: the formatters of bounded values (:func:`fmt_bounded`,
the one place ≥ / ≤ are written), the summary and ranking views, and ``show_figure`` /
``show_markdown`` / ``require`` for the notebook.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from apem.thesis import label

# a table cell is never cut short with "..." (pandas' default cuts text at 50 characters: Table 4.1's and
# chapter 10's parameter columns lost their ends); every chapter shows its tables through this module
pd.set_option("display.max_colwidth", None)


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


def num(x: float, digits: int = 1) -> str:
    """``x`` with ``digits`` decimals, never ``"-0"`` (a small negative value rounded to zero prints ``"0"``)."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


#: :func:`apem.stats.censored_bounds`'s ``mean_bound`` as a side of :func:`apem.stats.censoring_sides`
SIDES = {"exact": 0, "lower bound": 1, "upper bound": -1, "undetermined": 2}


#: what a mean censored on both sides is: every censored search enters at the bound, so the mean is the restricted
#: mean up to the bound (:func:`apem.stats.restricted_mean`), a defined statistic, but a bound of the mean on
#: neither side
RESTRICTED = "restricted mean: censored both ways, not a bound of the mean"


def fmt_bounded(value: float, side: int = 0, digits: int = 1, undetermined: str = RESTRICTED) -> str:
    """The one formatter of a value censoring may bound (sides as :func:`apem.stats.censoring_sides` gives them).

    ``0``: ``"66.1"``; ``+1`` (a lower bound): ``"≥ 66.1"``; ``-1`` (an upper bound): ``"≤ 66.1"``;
    ``2`` (bounded on neither side): ``"66.1 (restricted mean: censored both ways, not a bound of the
    mean)"``, :data:`RESTRICTED`; ``"–"`` when there is no value. ``digits=0`` prints integers (epsilons).
    """
    if value is None or not np.isfinite(value):
        return "–"
    text = num(value, digits)
    if side == 2:
        return f"{text} ({undetermined})"
    return {0: "", 1: "≥ ", -1: "≤ "}[int(side)] + text


def fmt_mean(mean: float, bound: str = "exact", digits: int = 1) -> str:
    """A mean as censoring leaves it (``bound``: :func:`apem.stats.censored_bounds`'s ``mean_bound``):
    :func:`fmt_bounded` of its side."""
    return fmt_bounded(mean, SIDES[bound], digits)


def fmt_median(lo: float, hi: float, digits: int = 1) -> str:
    """The median censoring allows: ``"41.0"`` when fixed, ``"≥ 41.0"``, ``"≤ 41.0"``, or ``"41.0 to 57.0"``."""
    if lo is None or hi is None or (np.isnan(lo) and np.isnan(hi)):
        return "–"
    if lo == hi:
        return num(lo, digits)
    if np.isinf(hi) and np.isfinite(lo):
        return f"≥ {num(lo, digits)}"
    if np.isinf(lo) and np.isfinite(hi):
        return f"≤ {num(hi, digits)}"
    if np.isinf(lo) and np.isinf(hi):
        return "undetermined"
    return f"{num(lo, digits)} to {num(hi, digits)}"


def summary_view(S: pd.DataFrame, thesis: pd.DataFrame | None = None, digits: int = 1) -> pd.DataFrame:
    """A :func:`apem.stats.summary_table` for reading: censoring in view, the thesis beside ours.

    Columns: ``images``, ``censored`` (rows with a censored search), ``mean`` (labelled
    ``≥`` when censored values make it a lower bound, named the restricted mean when they
    bound it on neither side), its 95% bootstrap interval over images (none for a mean that
    is not a bound: an interval would suggest the mean is estimated), ``median`` (the range
    censoring allows), and, given ``thesis`` (indexed like ``S``, with ``mean`` / ``median``),
    the thesis's values. Methods get their display names.
    """
    out = pd.DataFrame(index=S.index)
    out["images"] = S["n"].astype(int)
    if "censored" in S:
        out["censored"] = S["censored"].astype(int)
    bound = S["mean_bound"] if "mean_bound" in S else pd.Series("exact", index=S.index)
    out["mean"] = [fmt_mean(m, b, digits) for m, b in zip(S["mean"], bound)]
    if "mean_lo" in S:
        out["mean 95% CI"] = [f"[{num(lo, digits)}, {num(hi, digits)}]" if np.isfinite(lo) and np.isfinite(hi)
                              and b != "undetermined" else "–" for lo, hi, b in zip(S["mean_lo"], S["mean_hi"], bound)]
    if "median_min" in S:
        out["median"] = [fmt_median(a, b, digits) for a, b in zip(S["median_min"], S["median_max"])]
    else:
        out["median"] = [num(m, digits) if np.isfinite(m) else "–" for m in S["median"]]
    if thesis is not None:
        t = thesis.reindex(S.index)
        for c in ("mean", "median"):
            if c in t:
                out[f"thesis {c}"] = [f"{v:.2f}" if np.isfinite(v) else "–" for v in t[c].astype(float)]
    names = {"method": label}
    if isinstance(out.index, pd.MultiIndex):
        out.index = out.index.set_levels([out.index.levels[i].map(names.get(n, str)) if n in names else
                                          out.index.levels[i] for i, n in enumerate(out.index.names)])
    elif out.index.name == "method":
        out.index = out.index.map(label)
    return out


def censoring_note(table: pd.DataFrame, what: str = "searches") -> str:
    """One sentence: how many searches of a results table reached the bound, per side."""
    n = len(table)
    cm = int(table["censored_minus"].sum()) if "censored_minus" in table else 0
    cp = int(table["censored_plus"].sum()) if "censored_plus" in table else 0
    if not cm and not cp:
        return f"No search reached the bound (0 of {n} ε⁻ and 0 of {n} ε⁺): every epsilon here is exact."
    return (f"{cm} of {n} ε⁻ and {cp} of {n} ε⁺ {what} reached the bound (censored). A censored search enters at the "
            "bound, so a mean is the restricted mean up to the bound: for an epsilon a lower bound of its mean (marked "
            "≥), for an APEM with searches censored on both sides a bound of neither (no interval is shown for it); "
            "medians are shown as the range censoring allows.")


def fmt_ci(est: float, lo: float, hi: float, digits: int = 1) -> str:
    """``"12.3 [10.1, 14.0]"``; ``"–"`` for a missing estimate, no interval where it is undefined."""
    if est is None or not np.isfinite(est):
        return "–"
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return num(est, digits)
    return f"{num(est, digits)} [{num(lo, digits)}, {num(hi, digits)}]"


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


def show_figure(fig) -> None:
    """Display a figure once and close it (no ``<Figure ...>`` repr, no second copy from the inline backend)."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    fig = getattr(fig, "figure", fig)  # a seaborn grid -> its figure
    display(fig)
    plt.close(fig)


def show_markdown(text: str) -> None:
    """Display generated prose (Markdown with $math$)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def ranking_view(S: pd.DataFrame) -> pd.DataFrame:
    """The methods ranked by the restricted mean APEM (the thesis's statistic with every search capped at the
    bound), with the median's ranking beside it.

    ``S``: :func:`apem.stats.summary_table` per method. Columns: ``restricted mean`` (the mean of the
    stored values, each epsilon capped at the bound: :func:`apem.stats.restricted_mean`, defined whatever
    the censoring), ``rank by restricted mean``, ``median`` (its range under censoring), ``rank by
    median``, ``censored``; methods by display name, in the order of the restricted mean.
    """
    from apem.stats import ranking

    R = ranking(S)
    out = pd.DataFrame(index=R.index.map(label).rename("method"))
    out["restricted mean"] = [f"{m:.1f}" if np.isfinite(m) else "–" for m in R["mean"]]
    out["rank by restricted mean"] = R.rank_mean.to_numpy()
    out["median"] = [fmt_median(lo, hi) for lo, hi in zip(S.loc[R.index, "median_min"], S.loc[R.index, "median_max"])]
    out["rank by median"] = R.rank_median.to_numpy()
    out["censored"] = S.loc[R.index, "censored"].astype(int).to_numpy()
    return out


def bounds_view(summary: pd.DataFrame) -> str:
    """:func:`apem.studies.bounds.bound_summary` as a Markdown table with the methods' display names, or a sentence
    when no search was censored."""
    if summary.empty:
        return "No search of these images reached the bound: there is nothing to search again."
    cols = list(summary.columns)
    lines = ["| method | stage | " + " | ".join(cols) + " |", "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]
    for (m, st), r in summary.iterrows():
        lines.append(f"| {label(m)} | {st} | " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def verdicts_moved(before, after, bound: int) -> str:
    """Which verdicts of ``before`` (a decided :class:`apem.claims.Claims`) differ in ``after`` (the same claims on
    the table whose censored searches were searched up to ``bound``), as a sentence."""
    moved = [(a.text, a.verdict, b.verdict) for a, b in zip(before.claims, after.claims) if a.verdict != b.verdict]
    head = f"With the censored searches searched up to {bound:,} steps"
    if not moved:
        return f"{head}, every verdict stays the same."
    return (f"{head}, {len(moved)} of {len(before.claims)} verdicts move: "
            + "; ".join(f"*{t}*: {v0} → {v1}" for t, v0, v1 in moved)
            + ". These verdicts depend on where the search stops.")
