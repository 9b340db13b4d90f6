r"""Chapter 7, random relevance maps and the normalised APEM (thesis section 5.2, Figure 5.2, Table 5.1).

Every map of the correctly classified images also has a shuffled baseline: its
values permuted ``shuffles`` times, ε-shuffle⁻ and ε-shuffle⁺ the first step at
which any permutation changes the prediction. From them:

* ``apem_shuffle`` = ε-shuffle⁺ − ε-shuffle⁻, the APEM of a random map;
* ``apem_norm_term`` = ε⁺/ε-shuffle⁺ − ε⁻/ε-shuffle⁻, whose mean over the images
  is :math:`\mathrm{APEM}_{\mathrm{norm}}`.

Censoring: a censored ε is a lower bound. In ``apem_shuffle`` a censored
ε-shuffle⁺ makes the value a lower bound, a censored ε-shuffle⁻ an upper bound;
in ``apem_norm_term`` a censored ε⁺ or ε-shuffle⁻ makes it a lower bound, a
censored ε⁻ or ε-shuffle⁺ an upper bound. :func:`with_sides` turns these into
the two flags :func:`apem.stats.summary_table` reads, so the tables carry the
censored counts, the bound of the mean and the median's range as everywhere else.

What the thesis said that a test cannot show: that shuffled maps score "around
zero" and that their median "is 0". A test can support a difference, not an
equality, so the chapter tests what can be: a shuffled map scores closer to 0
than the map it came from (absolute values compared per image), and most shuffled maps tie exactly (ε-shuffle⁻ =
ε-shuffle⁺), which makes the median 0. Both are labelled ours.
"""

from __future__ import annotations



import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from apem import claims as cl, stats, thesis
from apem.figures import charts
from apem.book import display

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
        diffs.append(f"{S} permutations per map where the thesis used {THESIS_SHUFFLES}: a step counts as a change "
                     f"when any of them changes the prediction, so with {'fewer' if S < THESIS_SHUFFLES else 'more'} "
                     f"of them $\varepsilon\text{{-shuffle}}$ is {way} in distribution")
    if mode != THESIS_SHUFFLE_MODE:
        diffs.append("the permutations are drawn once per map and kept, where the thesis drew new ones at every tested "
                     "step; at any one step the chance of a change is the same for the same number of permutations, "
                     "but redrawing gives fresh chances at every earlier tested step, so the thesis's "
                     "$\varepsilon\text{-shuffle}$ can only be smaller")
    if search != THESIS_SEARCH:
        diffs.append(f"the `{search}` search tests other steps than the thesis's coarse-to-fine one; on the maps "
                     "themselves it finds the same first change (chapter 1), but with redrawn permutations the steps "
                     "tested decide the answer")
    return ("**Not the thesis's estimator, so not directly comparable with Table 5.1:** " + "; ".join(diffs)
            + ". Each difference moves $\varepsilon\text{-shuffle}$ and with it every term "
              "$\varepsilon/\varepsilon\text{-shuffle}$ of " + NORM + ": compare orders and signs with the "
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

    The columns :func:`apem.stats.summary_table` and :func:`apem.book.display.censoring_note` read for
    APEM, here standing for a derived value (:data:`SIDES`): a row censored both ways is
    bounded on neither side.
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


def summary(C: pd.DataFrame, value: str) -> pd.DataFrame:
    """:func:`apem.stats.summary_table` of ``value`` per method and stage, with its censoring."""
    return stats.summary_table(with_sides(C, value), by=["method", "stage"], value="apem", ci=True)


# ----------------------------------------------------------------------------- tables


def shuffled_view(C: pd.DataFrame) -> pd.DataFrame:
    """The APEM of shuffled maps per method and stage, with the share of exact ties (APEM exactly 0)."""
    S = summary(C, "apem_shuffle")
    known = determined(C, "apem_shuffle")
    zero = (C.apem_shuffle == 0) & known
    k = zero.groupby([C.method, C.stage], sort=False).sum().reindex(S.index, fill_value=0)
    n = known.groupby([C.method, C.stage], sort=False).sum().reindex(S.index, fill_value=0)
    v = display.summary_view(S)
    v["exactly 0"] = [f"{int(a)} of {int(b)}" for a, b in zip(k, n)]
    return v


def table_5_1(C: pd.DataFrame) -> pd.DataFrame:
    """Thesis Table 5.1 beside ours: mean (and median) APEM_norm per method and stage, censored counts."""
    th = thesis.TABLE_5_1.rename(columns={"apem_norm": "mean"}).set_index(["method", "stage"])
    return display.summary_view(summary(C, "apem_norm_term"), thesis=th, digits=2)


def _censored_counts(C: pd.DataFrame, value: str) -> pd.Series:
    t = with_sides(C, value)
    return (t.censored_plus | t.censored_minus).groupby([C.method, C.stage], sort=False).sum().astype(int)


# ----------------------------------------------------------------------------- figures


def shuffled_histograms(C: pd.DataFrame, method: str):
    """Figure 5.2: the APEM of ``method``'s shuffled maps, one panel per stage, censored counts in the titles."""
    stages = sorted(int(s) for s in C.stage.unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(4.6 * len(stages), 3.6), squeeze=False)
    k = _censored_counts(C, "apem_shuffle")
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
    k = _censored_counts(C, "apem_norm_term")
    stages = sorted(int(s) for s in C.stage.unique())
    methods = display.method_order(C)
    ax.set_xticks(range(len(methods)), [f"{thesis.label(m)}\ncensored {'/'.join(str(int(k.get((m, s), 0))) for s in stages)}"
                                        for m in methods])
    ax.set_ylabel("ε⁺/ε-shuffle⁺ − ε⁻/ε-shuffle⁻ per image")
    ax.axhline(0, color="k", lw=1, ls="--")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- claims


def _per_image(C: pd.DataFrame, method: str, stage: int, value: str, known_only: bool = True) -> pd.Series:
    g = C[(C.method == method) & (C.stage == stage)]
    if known_only:
        g = g[determined(g, value)]
    return cl.per_image(g, value)


def chapter_claims(C: pd.DataFrame, stages, method: str = "gradient") -> list:
    """The chapter's claims on the correct images ``C`` at ``stages``; ``method``: Figure 5.2's.

    * thesis: per method, APEM_norm is above 0 at every stage (AllOf of Location claims on the
      per-image terms);
    * thesis: per stage, APEM_norm orders the methods Gradient > LRP-ε > SmoothGrad (AllOf of
      Paired claims, adjacent pairs);
    * ours (the testable form of "around zero"): ``method``'s shuffled maps score closer to 0
      than the maps themselves (absolute values, per image), at every stage;
    * ours (the testable form of "the median is 0"): at every stage, more than half of
      ``method``'s shuffled maps tie exactly (APEM 0).

    Rows whose value is censored both ways (bounded on neither side) are left out of a claim.
    """
    methods = display.method_order(C)
    stages = [int(s) for s in stages]
    out = []
    for m in methods:
        out.append(cl.AllOf(
            f"{thesis.label(m)}: {NORM} is above 0 (better than a shuffled map) at every stage",
            of=[cl.Location(f"{thesis.label(m)}, stage {s}: {NORM} above 0",
                            values=_per_image(C, m, s, "apem_norm_term"), threshold=0.0,
                            what=f"{NORM} term") for s in stages]))
    have = set(thesis.RANKING) <= set(methods)
    why = f"the configuration lacks {', '.join(sorted(set(thesis.RANKING) - set(methods)))}" if not have else ""
    order = " > ".join(map(thesis.label, thesis.RANKING))
    for s in stages:
        parts = []
        for a, b in zip(thesis.RANKING[:-1], thesis.RANKING[1:]):
            parts.append(cl.Paired(f"stage {s}: {thesis.label(a)} > {thesis.label(b)}",
                                   a=_per_image(C, a, s, "apem_norm_term") if have else [],
                                   b=_per_image(C, b, s, "apem_norm_term") if have else [],
                                   names=(thesis.label(a), thesis.label(b)), digits=2, applicable=have, reason=why))
        out.append(cl.AllOf(f"Stage {s}: {NORM} orders the methods as the thesis did ({order})", of=parts,
                            applicable=have, reason=why))
    M = thesis.label(method)
    closer = []
    for s in stages:
        sh = _per_image(C, method, s, "apem_shuffle").abs()
        real = _per_image(C, method, s, "apem").abs()
        closer.append(cl.Paired(f"stage {s}: the shuffled map's APEM is closer to 0 than the map's", a=sh, b=real,
                                greater=False, names=("absolute shuffled APEM", "absolute APEM"), digits=0,
                                source=cl.OURS))
    out.append(cl.AllOf(f"Shuffled {M} maps score closer to 0 than the maps themselves, at every stage "
                        "(the thesis's “around zero”, as a test can state it)", of=closer, source=cl.OURS))
    ties = []
    for s in stages:
        v = _per_image(C, method, s, "apem_shuffle")
        ties.append(cl.Proportion(f"stage {s}: more than half of the shuffled maps have APEM exactly 0",
                                  outcomes=(v == 0), threshold=0.5, what="shuffled maps with APEM exactly 0",
                                  source=cl.OURS))
    out.append(cl.AllOf(f"Most shuffled {M} maps tie exactly (ε-shuffle⁻ = ε-shuffle⁺), so their median APEM is 0, "
                        "at every stage (the thesis's “the median is 0”, as a test can state it)", of=ties,
                        source=cl.OURS))
    return out


# ----------------------------------------------------------------------------- the page


class Page:
    """Chapter 7 on the correct images; ``stage`` for the claims (None: every stage), ``method`` for Figure 5.2."""

    def __init__(self, params="default", overrides=None, *, alpha: float = 0.05, stage: int | None = None,
                 method: str | None = None):
        from apem.run import results
        from apem.studies.common import pick_stage

        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg, T = self.res.cfg, self.res.table
        self.alpha = alpha
        self.has_shuffles = self.cfg.shuffles > 0 and "eps_shuffle_minus" in T
        self.C = T[T.group == "correct"]
        self.methods = display.method_order(self.C) if len(self.C) else []
        self.stages = sorted(int(s) for s in self.C.stage.unique())
        self.claim_stages = self.stages if stage is None else [pick_stage(self.res, stage)]
        self.method = method or ("gradient" if "gradient" in self.methods else (self.methods or [None])[0])

    def setting(self) -> None:
        display.require(self.has_shuffles, "The shuffled baseline was not computed: shuffles is 0",
                       "apem book --chapter 7 -p shuffles 3")
        display.require(len(self.C) > 0, "The configuration has no correctly classified image", "-p n_correct 24")
        if self.method not in self.methods:
            raise ValueError(f"method {self.method!r} is not in the results table (it has {self.methods})")
        cfg, C = self.cfg, self.C
        display.show_markdown(
            f"**Setting.** {cfg.model}, {C.image_id.nunique()} correctly classified images, methods "
            f"{', '.join(map(thesis.label, self.methods))}, stages {', '.join(map(str, self.stages))}; "
            f"{cfg.shuffles} shuffles per map ({cfg.shuffle_mode}), `{cfg.search_mode}` search with bound "
            f"{cfg.search_bound}. The maps: {display.censoring_note(C)} The shuffled maps: "
            f"{display.censoring_note(self._shuffled_flags(), 'shuffled searches')}\n\n{comparability(cfg)}")

    def _shuffled_flags(self) -> pd.DataFrame:
        return self.C.assign(censored_minus=self.C.censored_shuffle_minus, censored_plus=self.C.censored_shuffle_plus)

    # ------------------------------------------------------------------ shuffled maps
    def figure_5_2(self) -> None:
        display.show_figure(shuffled_histograms(self.C, self.method))

    def shuffled_table(self) -> pd.DataFrame:
        return shuffled_view(self.C)

    def shuffled_summary(self) -> None:
        """A sentence from the numbers: how many medians are 0, how far the means are from 0."""
        S = summary(self.C, "apem_shuffle")
        zero = int(((S.median_min == 0) & (S.median_max == 0)).sum())
        real = summary(self.C, "apem")
        ratio = (S["mean"].abs() / real["mean"].abs().replace(0, np.nan)).dropna()
        display.show_markdown(
            f"The median APEM of the shuffled maps is 0 in {zero} of {len(S)} method-stage cells; the thesis "
            f"found 0 in every one. The mean's size relative to the maps' own mean APEM ranges from "
            f"{cl.fmt(float(ratio.min()) if len(ratio) else np.nan, 0, pct=True)} to "
            f"{cl.fmt(float(ratio.max()) if len(ratio) else np.nan, 0, pct=True)}.")

    # ------------------------------------------------------------------ APEM_norm
    def table_5_1(self) -> pd.DataFrame:
        return table_5_1(self.C)

    def norm_boxes(self) -> None:
        display.show_figure(norm_boxes(self.C))

    # ------------------------------------------------------------------ verdicts
    def claims(self) -> cl.Claims:
        N = summary(self.C, "apem_norm_term")
        ours = {s: " > ".join(thesis.label(m) for m in N.xs(s, level="stage")["mean"].sort_values(ascending=False).index)
                for s in self.claim_stages}
        context = ("By the mean of " + NORM + " our order is " + "; ".join(f"stage {s}: {o}" for s, o in ours.items())
                   + f"; the thesis's is {' > '.join(map(thesis.label, thesis.RANKING))} at every stage. A test can show "
                   "a difference, not an equality, so the thesis's “around zero” and “the median is 0” appear in the "
                   "forms a test can support, labelled ours.")
        return cl.Claims(chapter_claims(self.C, self.claim_stages, self.method), alpha=self.alpha, context=context)

    def verdicts(self) -> None:
        n = self.C.image_id.nunique()
        model = (f"Our model is {self.cfg.model} on {n} images with {self.cfg.shuffles} shuffles per map; the thesis "
                 "measured VGG-16 on 5,000 images with 10.")
        cens = (display.censoring_note(self.C) + " Shuffled maps: "
                + display.censoring_note(self._shuffled_flags(), "shuffled searches"))
        self.claims().show(censored=cens, model=model)
