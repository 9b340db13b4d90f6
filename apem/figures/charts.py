"""Statistical figures of the chapters (distributions and comparisons), with seaborn.

:mod:`apem.figures.plots` draws maps and images; this module draws numbers: boxplots
of APEM and the epsilons (thesis Figures 4.2, 4.3, 4.7, 5.3), pairwise
better/equal/worse bars (Figure 4.4), histograms with a KDE (Figures 5.1,
5.2). Every function returns the matplotlib Figure, released from pyplot (see
:func:`apem.figures.plots.released`): in a notebook it shows once, as the cell's value or through
``display`` (:func:`apem.book.display.show_figure`), never a second time from the inline
backend, and it prints no ``<Figure ...>`` text.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from apem import stats
from apem.figures.plots import released
from apem.thesis import label

sns.set_theme(context="notebook", style="whitegrid")
PALETTE = "colorblind"
VALUE_LABELS = {
    "apem": "APEM = ε⁺ − ε⁻  (higher is better)",
    "eps_minus": "ε⁻ (relevance; lower is better)",
    "eps_plus": "ε⁺ (irrelevance; higher is better)",
    "apem_shuffle": "APEM of shuffled maps",
}


def _labelled(table: pd.DataFrame) -> pd.DataFrame:
    t = table.copy()
    t["Method"] = t.method.map(label)
    if "stage" in t:
        t["Stage"] = t.stage.map(lambda s: f"stage {s}")
    return t


def boxes(table: pd.DataFrame, values=("apem", "eps_minus", "eps_plus"), hue: str | None = None,
          log: bool = True, title: str | None = None, col_wrap: int | None = None):
    """One panel per value: a boxplot per method (and per ``hue`` level, e.g. ``"Stage"``)."""
    t = _labelled(table)
    n = len(values)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False)
    order = list(dict.fromkeys(t.Method))
    for ax, v in zip(axes[0], values):
        sns.boxplot(data=t, x="Method", y=v, hue=hue, order=order, ax=ax, palette=PALETTE if hue else None,
                    color=None if hue else "#8fb3d9", showfliers=True, fliersize=2)
        if log and (t[v].dropna() > 0).all():
            ax.set_yscale("log")
        elif log:
            ax.set_yscale("symlog", linthresh=1)
        ax.set_ylabel(VALUE_LABELS.get(v, v))
        ax.set_xlabel("")
        if hue and ax is not axes[0][-1] and ax.get_legend():
            ax.get_legend().remove()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return released(fig)


def pairwise_bars(outcomes: pd.DataFrame, title: str = "Per-image comparison of APEM"):
    """Stacked bars: for each ordered pair (a vs b), the fraction of images where a is better / equal / worse."""
    o = outcomes.copy()
    o["pair"] = [f"{label(a)} vs {label(b)}" for a, b in zip(o.a, o.b)]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(o) + 1.4))
    left = np.zeros(len(o))
    colours = {"better": "#3a923a", "equal": "#bbbbbb", "worse": "#c03d3e"}
    for k in ("better", "equal", "worse"):
        ax.barh(o.pair, o[k], left=left, color=colours[k], label=k)
        for y, (l, w) in enumerate(zip(left, o[k])):
            if w >= 0.06:
                ax.text(l + w / 2, y, f"{w:.0%}", ha="center", va="center", color="white", fontsize=9)
        left += o[k].to_numpy()
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of images")
    ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.set_title(title, pad=28)
    fig.tight_layout()
    return released(fig)


def hist_kde(values, xlabel: str, title: str = "", zero_line: bool = True, bins: int | str = "auto", ax=None):
    """Histogram with a kernel density estimate (thesis Figures 5.1 and 5.2)."""
    v = pd.Series(np.asarray(values, dtype=float)).dropna()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
    sns.histplot(v, bins=bins, kde=len(v) > 2 and v.nunique() > 1, ax=ax, color="#4c72b0")
    if zero_line:
        ax.axvline(0, color="k", lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    if title:
        ax.set_title(title)
    return released(fig) if fig is not None else ax.figure  # a caller's axes: its figure stays the caller's


def stage_grid(table: pd.DataFrame, values=("apem", "eps_minus", "eps_plus")):
    """Thesis Figure 4.7: per value, boxplots per method with the stages side by side."""
    return boxes(table, values, hue="Stage")


def bar_with_ci(summary: pd.DataFrame, stat: str = "mean", thesis: pd.Series | None = None, title: str = "",
                name: str | None = None):
    """Bars of a summary's ``stat`` with its bootstrap interval, and the thesis's value as a marker.

    ``name``: what the bars are called (default ``stat``; chapter 3 says "restricted mean"). A mean that
    censoring bounds on neither side (``mean_bound == "undetermined"``) is drawn hatched, without an interval.
    """
    s = summary.reset_index()
    s["Method"] = s.method.map(label)
    name = name or stat
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    x = np.arange(len(s))
    err = np.vstack([s[stat] - s[f"{stat}_lo"], s[f"{stat}_hi"] - s[stat]])
    both = (s["mean_bound"] == "undetermined").to_numpy() if stat == "mean" and "mean_bound" in s else \
        np.zeros(len(s), bool)
    err[:, both] = np.nan
    bars = ax.bar(x, s[stat], yerr=err, capsize=4, color="#8fb3d9", label=f"ours ({name}, 95% CI)")
    for bar, hatch in zip(bars, both):
        if hatch:
            bar.set_hatch("//")
    if both.any():
        ax.bar([np.nan], [np.nan], color="#8fb3d9", hatch="//", label="censored both ways: no interval")
    if thesis is not None:
        ax.scatter(x, [thesis.get(m, np.nan) for m in s.method], color="k", marker="D", zorder=3,
                   label="thesis (VGG-16)")
    ax.set_xticks(x, s.Method)
    ax.set_ylabel(f"{name} APEM")
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return released(fig)


def censored_boxes(table: pd.DataFrame, values=("apem", "eps_minus", "eps_plus"), hue: str | None = None,
                   title: str = ""):
    """One boxplot panel per value, a box per method (and per ``hue`` level, e.g. ``"stage"``).

    Each method's tick label carries its censored count for that panel's value
    ("2 censored", or per hue level "censored 2/1/0"); a logarithmic axis
    (symmetric-log when a value is not positive). Returns the Figure.
    """
    t = table.copy()
    t["Method"] = t.method.map(label)
    order = list(dict.fromkeys(t.Method))
    methods = list(dict.fromkeys(t.method))
    hue_col = None
    if hue:
        hue_col = hue.capitalize()
        t[hue_col] = t[hue].map(lambda s: f"{hue} {s}")
    fig, axes = plt.subplots(1, len(values), figsize=(4.8 * len(values), 4.4), squeeze=False)
    for ax, v in zip(axes[0], values):
        sns.boxplot(data=t, x="Method", y=v, hue=hue_col, order=order, ax=ax,
                    palette=PALETTE if hue_col else None, color=None if hue_col else "#8fb3d9",
                    showfliers=True, fliersize=2)
        ax.set_yscale("log" if (t[v].dropna() > 0).all() else "symlog", **({} if (t[v].dropna() > 0).all()
                                                                           else {"linthresh": 1}))
        ax.set_ylabel(VALUE_LABELS.get(v, v))
        ax.set_xlabel("")
        if hue:
            k = stats.censored_counts(table, v, ("method", hue))
            levels = sorted(table[hue].unique())
            ticks = [f"{label(m)}\ncensored {'/'.join(str(int(k.get((m, s), 0))) for s in levels)}"
                     for m in methods]
        else:
            k = stats.censored_counts(table, v)
            ticks = [f"{label(m)}\n{int(k.get(m, 0))} censored" for m in methods]
        ax.set_xticks(range(len(order)), ticks)
        if hue and ax is not axes[0][-1] and ax.get_legend():
            ax.get_legend().remove()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def censored_total(table: pd.DataFrame, value: str = "apem") -> str:
    """``"3 of 72 censored"`` for a figure's title."""
    f = stats.censored(table, value)
    return f"{int(f.sum())} of {int(table[value].notna().sum())} censored"
