r"""Chapter 7, random relevance maps and the normalised APEM (thesis section 5.2, Figure 5.2, Table 5.1).

The page (``notebooks/07_random_relevance_maps.md``) selects the correctly classified images,
declares its claims and decides them; this module holds what it calls.

Every map of the correctly classified images also has a shuffled baseline: its
values permuted ``shuffles`` times, ε-shuffle⁻ and ε-shuffle⁺ the first step at
which any permutation changes the prediction. From them:

* ``apem_shuffle`` = ε-shuffle⁺ − ε-shuffle⁻, the APEM of a random map;
* ``apem_norm_term`` = ε⁺/ε-shuffle⁺ − ε⁻/ε-shuffle⁻, whose mean over the images
  is :math:`\mathrm{APEM}_{\mathrm{norm}}`.

Censoring: a censored ε is a lower bound. In ``apem_shuffle`` a censored
ε-shuffle⁺ makes the value a lower bound, a censored ε-shuffle⁻ an upper bound;
in ``apem_norm_term`` a censored ε⁺ or ε-shuffle⁻ makes it a lower bound, a
censored ε⁻ or ε-shuffle⁺ an upper bound (:data:`SIDES`). :func:`with_sides` turns these into
the two flags :func:`apem.stats.summary_table` and :func:`apem.stats.censored_counts` read, so the
tables carry the censored counts, the bound of the mean and the median's range as everywhere else.

What the thesis said that a test cannot show: that shuffled maps score "around
zero" and that their median "is 0". A test can support a difference, not an
equality, so the page tests what can be: a shuffled map scores closer to 0
than the map it came from (absolute values compared per image), and most shuffled maps tie exactly (ε-shuffle⁻ =
ε-shuffle⁺), which makes the median 0. Both are labelled ours, as is "APEM_norm > 0" (the thesis
reports Table 5.1's means and states no test of them against 0).

* censoring of the derived values: :func:`with_sides`, :func:`determined`, :func:`shuffled_flags`; of the
  four epsilons: :func:`epsilon_censoring`;
* tables: :func:`shuffled_view`, :func:`table_5_1`;
* figures: :func:`shuffled_histograms` (Figure 5.2), :func:`norm_boxes`;
* prose: :func:`comparability`, :func:`setting`, :func:`notes`;
* the exercises' numbers: :func:`exercise_values`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from apem import claims, stats, thesis
from apem.book import display
from apem.figures import charts

NORM = r"$\mathrm{APEM}_{\mathrm{norm}}$"

#: the thesis's shuffled baseline (section 5.2): ten permutations drawn anew at every tested step of its search
THESIS_SHUFFLES, THESIS_SHUFFLE_MODE, THESIS_SEARCH = 10, "per_step", "thesis"


def comparability(cfg) -> str:
    """Whether this configuration's shuffled baseline is the thesis's estimator, and exactly how it differs if not.

    ε-shuffle is the first tested step at which *any* of the S permutations changes the
    prediction. With S permutations held fixed, the chance that a given step counts as a
    change is 1 - (1 - F(ε))^S (F: the share of permutations that change the prediction at
    ε), the same as with S permutations drawn anew at that step, as the thesis did. Drawing
    anew also gives fresh chances at every earlier tested step, so the thesis's ε-shuffle is
    at most as large in distribution; fewer permutations make it larger. Either change moves
    ε-shuffle and with it every term ε/ε-shuffle of APEM_norm.
    """
    S, mode, search = int(cfg.shuffles), cfg.shuffle_mode, cfg.search_mode
    if (S, mode, search) == (THESIS_SHUFFLES, THESIS_SHUFFLE_MODE, THESIS_SEARCH):
        return ("**Comparable with Table 5.1.** This configuration uses the thesis's estimator: ten permutations "
                "drawn anew at every step the thesis's coarse-to-fine search tests.")
    diffs = []
    if S != THESIS_SHUFFLES:
        way = "larger" if S < THESIS_SHUFFLES else "smaller"
        diffs.append(rf"{S} permutations per map where the thesis used {THESIS_SHUFFLES}: a step counts as a change "
                     f"when any of them changes the prediction, so with {'fewer' if S < THESIS_SHUFFLES else 'more'} "
                     rf"of them $\varepsilon\text{{-shuffle}}$ is {way} in distribution")
    if mode != THESIS_SHUFFLE_MODE:
        diffs.append("the permutations are drawn once per map and kept, where the thesis drew new ones at every "
                     "tested step; at any one step the chance of a change is the same for the same number of "
                     "permutations, but redrawing gives fresh chances at every earlier tested step, so the thesis's "
                     r"$\varepsilon\text{-shuffle}$ can only be smaller")
    if search != THESIS_SEARCH:
        diffs.append(f"the `{search}` search tests other steps than the thesis's coarse-to-fine one; on the maps "
                     "themselves it finds the same first change (chapter 1), but with redrawn permutations the steps "
                     "tested decide the answer")
    return ("**Not the thesis's estimator, so not directly comparable with Table 5.1:** " + "; ".join(diffs)
            + r". Each difference moves $\varepsilon\text{-shuffle}$ and with it every term "
              r"$\varepsilon/\varepsilon\text{-shuffle}$ of " + NORM + ": compare orders and signs with the "
              "thesis, not values. The `full` parameter set (`apem book --params full`) runs the thesis's estimator "
              "(hours on a 2-core CPU).")


#: per derived value: the censoring flags that make it a lower bound, and those that make it an upper bound
SIDES = {
    "apem_shuffle": (("censored_shuffle_plus",), ("censored_shuffle_minus",)),
    "apem_norm_term": (("censored_plus", "censored_shuffle_minus"), ("censored_minus", "censored_shuffle_plus")),
    "apem": (("censored_plus",), ("censored_minus",)),
}


# ----------------------------------------------------------------------------- censoring of derived values


def with_sides(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """``table`` with ``value`` as ``apem`` and its censoring as ``censored_plus`` (lower bound) / ``censored_minus``.

    The columns :func:`apem.stats.summary_table`, :func:`apem.stats.censored_counts` and
    :func:`apem.book.display.censoring_note` read for APEM, here standing for a derived value
    (:data:`SIDES`): a row censored both ways is bounded on neither side.
    """
    lower, upper = SIDES[value]
    out = table[[c for c in ("image_id", "method", "stage", "group") if c in table]].copy()
    out["apem"] = table[value].to_numpy(float)
    out["censored_plus"] = table[list(lower)].astype(bool).any(axis=1).to_numpy()
    out["censored_minus"] = table[list(upper)].astype(bool).any(axis=1).to_numpy()
    return out


def determined(table: pd.DataFrame, value: str) -> pd.Series:
    """Per row: is ``value`` known to lie on one side at least (not censored both ways, not NaN)?"""
    t = with_sides(table, value)
    return (~(t.censored_plus & t.censored_minus) & t.apem.notna()).set_axis(table.index)


#: the four epsilons of a map and its shuffled maps, each with the flag that says its search reached the bound
EPSILONS = {"eps_minus": "censored_minus", "eps_plus": "censored_plus",
            "eps_shuffle_minus": "censored_shuffle_minus", "eps_shuffle_plus": "censored_shuffle_plus"}


def epsilon_censoring(table: pd.DataFrame, by: str = "method") -> dict[str, claims.PerGroup]:
    """Per epsilon of :data:`EPSILONS`: whether each image's value is censored (a lower bound), per level of ``by``.

    ``{column: {method: bool Series by image}}``, as :func:`apem.claims.censored_of` gives for ε⁻ and ε⁺,
    here also for the shuffled searches' ε-shuffle⁻ and ε-shuffle⁺ (a NaN epsilon is not censored). For a
    claim's ``censored=``.
    """
    out = {}
    for col, flag in EPSILONS.items():
        f = table[flag].astype(bool) & table[col].notna()
        out[col] = claims.per_group(table.assign(_censored=f), "_censored", by=by, how="any")
    return out


def shuffled_flags(C: pd.DataFrame) -> pd.DataFrame:
    """``C`` with the shuffled searches' flags as ``censored_minus/plus`` (for
    :func:`apem.book.display.censoring_note`)."""
    return C.assign(censored_minus=C.censored_shuffle_minus, censored_plus=C.censored_shuffle_plus)


# ----------------------------------------------------------------------------- tables


def shuffled_view(S: pd.DataFrame, C: pd.DataFrame) -> pd.DataFrame:
    """The APEM of shuffled maps per method and stage, with the share of exact ties (APEM exactly 0).

    ``S``: :func:`apem.stats.summary_table` of :func:`with_sides` ``(C, "apem_shuffle")`` per method and stage;
    ``C``: the rows it summarises. Formatted by :func:`apem.book.display.summary_view`, with the column
    ``exactly 0``: the shuffled maps with ε-shuffle⁻ = ε-shuffle⁺, of those not censored both ways.
    """
    known = determined(C, "apem_shuffle")
    zero = (C.apem_shuffle == 0) & known
    k = zero.groupby([C.method, C.stage], sort=False).sum().reindex(S.index, fill_value=0)
    n = known.groupby([C.method, C.stage], sort=False).sum().reindex(S.index, fill_value=0)
    v = display.summary_view(S)
    v["exactly 0"] = [f"{int(a)} of {int(b)}" for a, b in zip(k, n)]
    return v


def table_5_1(S: pd.DataFrame) -> pd.DataFrame:
    """Thesis Table 5.1 beside ours: ``S`` (:func:`apem.stats.summary_table` of the APEM_norm terms per method and
    stage, :func:`with_sides` ``(C, "apem_norm_term")``) for reading, the thesis's mean beside ours."""
    th = thesis.TABLE_5_1.rename(columns={"apem_norm": "mean"}).set_index(["method", "stage"])
    return display.summary_view(S, thesis=th, digits=2)


# ----------------------------------------------------------------------------- figures


def shuffled_histograms(C: pd.DataFrame, method: str):
    """Figure 5.2: the APEM of ``method``'s shuffled maps, one panel per stage, censored counts in the titles."""
    stages = sorted(int(s) for s in C.stage.unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(4.6 * len(stages), 3.6), squeeze=False)
    k = stats.censored_counts(with_sides(C, "apem_shuffle"), "apem", by=("method", "stage"))
    for ax, s in zip(axes[0], stages):
        v = C[(C.method == method) & (C.stage == s)].apem_shuffle
        charts.hist_kde(v, "APEM of the shuffled map", f"{thesis.label(method)}, stage {s}\n"
                        f"{int(k.get((method, s), 0))} of {int(v.notna().sum())} censored", ax=ax,
                        bins=min(15, max(5, int(v.notna().sum()))))
    fig.tight_layout()
    return fig


def norm_boxes(C: pd.DataFrame):
    """The per-image terms of APEM_norm, a box per method and stage; censored counts per stage in the tick labels."""
    fig = charts.boxes(C, ("apem_norm_term",), hue="Stage", log=False)
    ax = fig.axes[0]
    k = stats.censored_counts(with_sides(C, "apem_norm_term"), "apem", by=("method", "stage"))
    stages = sorted(int(s) for s in C.stage.unique())
    methods = display.method_order(C)
    ax.set_xticks(range(len(methods)),
                  [f"{thesis.label(m)}\ncensored {'/'.join(str(int(k.get((m, s), 0))) for s in stages)}"
                   for m in methods])
    ax.set_ylabel("ε⁺/ε-shuffle⁺ − ε⁻/ε-shuffle⁻ per image")
    ax.axhline(0, color="k", lw=1, ls="--")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- prose


def setting(cfg, C: pd.DataFrame) -> str:
    """The setting line: model, images, methods, stages, shuffles, search, both censoring notes and
    :func:`comparability`."""
    methods = display.method_order(C)
    stages = sorted(int(s) for s in C.stage.unique())
    return (f"**Setting.** {cfg.model}, {C.image_id.nunique()} correctly classified images, methods "
            f"{', '.join(map(thesis.label, methods))}, stages {', '.join(map(str, stages))}; "
            f"{cfg.shuffles} shuffles per map ({cfg.shuffle_mode}), `{cfg.search_mode}` search with bound "
            f"{cfg.search_bound}. The maps: {display.censoring_note(C)} The shuffled maps: "
            f"{display.censoring_note(shuffled_flags(C), 'shuffled searches')}\n\n{comparability(cfg)}")


def notes(cfg, C: pd.DataFrame, S_norm: pd.DataFrame, stages) -> dict[str, str]:
    """The verdicts' discussion: ``context`` (our order by the mean of APEM_norm at ``stages``, from ``S_norm``, the
    :func:`apem.stats.summary_table` of its terms; the thesis's), ``model``, ``censored`` (maps and shuffled maps)."""
    by_mean = {s: S_norm.xs(s, level="stage")["mean"].sort_values(ascending=False).index for s in stages}
    ours = {s: " > ".join(map(thesis.label, methods)) for s, methods in by_mean.items()}
    return {
        "context": ("By the mean of " + NORM + " our order is " + "; ".join(f"stage {s}: {o}" for s, o in ours.items())
                    + f"; the thesis's is {' > '.join(map(thesis.label, thesis.RANKING))} at every stage. A test "
                    "can show a difference, not an equality: the thesis's “around 0, median 0 for every case” is "
                    "tested as written (never held, not held where a sign test finds a median nonzero), and beside "
                    "it in the weaker forms a test can support, labelled ours."),
        "model": (f"Our model is {cfg.model} on {C.image_id.nunique()} images with {cfg.shuffles} shuffles per map; "
                  "the thesis measured VGG-16 on 5,000 images with 10."),
        "censored": (display.censoring_note(C) + " Shuffled maps: "
                     + display.censoring_note(shuffled_flags(C), "shuffled searches")),
    }


# ----------------------------------------------------------------------------- exercises


def exercise_values(C: pd.DataFrame, shuffles: int, stage: int | None = None) -> dict[str, str]:
    """The numbers the exercises' solutions quote (name -> text), on the correct images ``C`` of a configuration
    with ``shuffles`` permutations per map, at ``stage`` (the chapter parameter; None: the last stage)."""
    s = stage if stage is not None else (max(int(x) for x in C.stage.unique()) if len(C) else None)
    out = {"ex07_shuffles": str(shuffles), "ex07_stage": str(s)}
    Cs = C[C.stage == s]
    if not (shuffles > 0 and "eps_shuffle_minus" in C) or Cs.empty:
        out.update(ex07_eps_shuffle="(no shuffled baseline in this configuration)", ex07_shuffled_apem="–",
                   ex07_norm="–")
        return out
    out["ex07_eps_shuffle"] = (f"mean ε-shuffle⁻ {claims.fmt(float(Cs.eps_shuffle_minus.mean()), 0)} and mean "
                               f"ε-shuffle⁺ {claims.fmt(float(Cs.eps_shuffle_plus.mean()), 0)}")
    out["ex07_shuffled_apem"] = ", ".join(f"{thesis.label(m)} {claims.fmt(float(g.apem_shuffle.mean()), 0)}"
                                          for m, g in Cs.groupby("method", sort=False))
    out["ex07_norm"] = ", ".join(f"{thesis.label(m)} {claims.fmt(float(g.apem_norm_term.mean()), 2)}"
                                 for m, g in Cs.groupby("method", sort=False))
    return out
