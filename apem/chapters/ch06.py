"""Chapter 6, the importance of irrelevance (thesis section 5.1, Figure 5.1).

On the correctly classified images at one stage (the thesis's stage 3 by
default), two questions:

* among the images where ``method_a`` has the better (lower) ε⁻ than
  ``method_b``, is its ε⁺ sometimes better and sometimes worse (Figure 5.1)?
* for every pair of methods, how often does ε⁻ alone pick another winner than
  APEM does?

Both are shares of images: exact (Clopper-Pearson) intervals and exact binomial
tests, never a bootstrap (a bootstrap of 0/n is the degenerate [0, 0]).

Censoring: a censored ε is only a lower bound, so the order of two values is
known only when censoring cannot reverse it (:func:`known_order`); images whose
order is unknown are left out of a share and counted.
"""

from __future__ import annotations

import itertools


import numpy as np
import pandas as pd
from scipy import stats as sps

from apem import claims as cl, stats, thesis
from apem.figures import charts
from apem.book import display
from apem.run import results
from apem.studies.common import pick_stage

#: "common": a share of images above this
COMMON = 0.10


# ----------------------------------------------------------------------------- orders under censoring


def known_order(x, sx, y, sy) -> np.ndarray:
    """Per pair: the sign of ``x - y`` where censoring cannot change it, else NaN.

    ``sx``, ``sy``: :func:`apem.stats.censoring_sides` of each value (0 exact, +1 a lower
    bound, -1 an upper bound, 2 bounded on neither side). ``x > y`` is certain when ``x``
    can only be larger than stored and ``y`` only smaller; ``x == y`` only when both are exact.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx, sy = np.asarray(sx), np.asarray(sy)
    d = np.sign(x - y)
    up_x, down_x = np.isin(sx, (0, 1)), np.isin(sx, (0, -1))
    up_y, down_y = np.isin(sy, (0, 1)), np.isin(sy, (0, -1))
    ok = np.where(d > 0, up_x & down_y, np.where(d < 0, down_x & up_y, (sx == 0) & (sy == 0)))
    return np.where(ok & ~np.isnan(d), d, np.nan)


def _wide(C: pd.DataFrame, value: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``value`` and its censoring side, one row per image, one column per method."""
    t = C.assign(_side=stats.censoring_sides(C, value))
    v = t.pivot(index="image_id", columns="method", values=value)
    s = t.pivot(index="image_id", columns="method", values="_side").reindex_like(v)
    return v, s


def _order(C: pd.DataFrame, value: str, a: str, b: str) -> pd.Series:
    v, s = _wide(C, value)
    return pd.Series(known_order(v[a], s[a], v[b], s[b]), index=v.index)


# ----------------------------------------------------------------------------- Figure 5.1


def irrelevance_split(C: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Images where ``a`` has the lower ε⁻ than ``b`` (for certain), with the ε⁺ difference and its verdict.

    Columns: ``diff`` = ε⁺(a) − ε⁺(b) as stored, ``censored`` (either ε⁺ censored),
    ``better`` / ``worse`` (``a``'s ε⁺ higher / lower, NaN when censoring leaves the order unknown).
    """
    minus = _order(C, "eps_minus", a, b)
    plus = _order(C, "eps_plus", a, b)
    ep, sp = _wide(C, "eps_plus")
    sel = minus.index[minus < 0]
    out = pd.DataFrame({"diff": (ep[a] - ep[b]).loc[sel], "censored": ((sp[a] != 0) | (sp[b] != 0)).loc[sel]})
    o = plus.loc[sel]
    out["better"] = np.where(o.isna(), np.nan, (o > 0).astype(float))
    out["worse"] = np.where(o.isna(), np.nan, (o < 0).astype(float))
    return out


# ----------------------------------------------------------------------------- ε⁻ alone against APEM


def flips(C: pd.DataFrame, a: str, b: str) -> pd.Series:
    """Per image: does ε⁻ alone (lower wins) pick another winner than APEM (higher wins)?

    NaN where either order is a tie or unknown under censoring: such images decide nothing.
    """
    by_minus = -_order(C, "eps_minus", a, b)  # +1: a wins on ε⁻
    by_apem = _order(C, "apem", a, b)  # +1: a wins on APEM
    decided = by_minus.notna() & by_apem.notna() & (by_minus != 0) & (by_apem != 0)
    return (by_minus != by_apem).astype(float).where(decided)


def exact_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Clopper-Pearson interval of ``k`` of ``n`` at ``1 - alpha`` (NaN, NaN for n = 0)."""
    if n == 0:
        return np.nan, np.nan
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - alpha, method="exact")
    return float(ci.low), float(ci.high)


def flip_table(C: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of methods: images decided, images where ε⁻ alone picks the other winner, share, exact interval."""
    rows = []
    for a, b in itertools.combinations(display.method_order(C), 2):
        f = flips(C, a, b)
        n, k = int(f.notna().sum()), int(f.sum())
        lo, hi = exact_interval(k, n, alpha)
        rows.append({"pair": f"{thesis.label(a)} vs {thesis.label(b)}", "images decided": n,
                     "left out (tie or censored)": int(f.isna().sum()),
                     "ε⁻ alone picks the other winner": k, "share": cl.fmt(k / n if n else np.nan, 0, pct=True),
                     f"{cl.fmt(1 - alpha, 0, pct=True)} exact interval":
                         f"[{cl.fmt(lo, 0, pct=True)}, {cl.fmt(hi, 0, pct=True)}]" if n else "–"})
    return pd.DataFrame(rows).set_index("pair")


# ----------------------------------------------------------------------------- claims


def chapter_claims(C: pd.DataFrame, a: str, b: str, common: float = COMMON) -> list:
    """The thesis's claim (both ε⁺ outcomes are common where ``a`` has the better ε⁻) and ours (ε⁻ alone flips).

    * thesis: AllOf of two Proportion claims, the share of those images on which ``a``'s ε⁺
      is better, and the share on which it is worse, each above ``common``;
    * ours: the share of images where ε⁻ alone picks another winner between ``a`` and ``b``
      than APEM is above ``common``.
    """
    A, B, pct = thesis.label(a), thesis.label(b), cl.fmt(common, 0, pct=True)
    split = irrelevance_split(C, a, b)
    none = f"no image where {A} has the lower ε⁻"
    both = cl.AllOf(
        f"Where {A} has the better ε⁻, its ε⁺ is sometimes better and sometimes worse than {B}'s (both common)",
        of=[cl.Proportion(f"{A}'s ε⁺ is better on more than {pct} of these images", outcomes=split.better,
                          threshold=common, what=f"images with the better ε⁺ for {A}"),
            cl.Proportion(f"{A}'s ε⁺ is worse on more than {pct} of these images", outcomes=split.worse,
                          threshold=common, what=f"images with the worse ε⁺ for {A}")],
        applicable=len(split) > 0, reason=none)
    f = flips(C, a, b)
    ours = cl.Proportion(f"ε⁻ alone picks another winner than APEM between {A} and {B} on more than {pct} of images",
                         outcomes=f, threshold=common, what="images where ε⁻ alone flips the verdict",
                         source=cl.OURS, applicable=bool(f.notna().any()),
                         reason="no image where both ε⁻ and APEM tell the methods apart")
    return [both, ours]


# ----------------------------------------------------------------------------- the page


class Page:
    """Chapter 6 on the correct images at ``stage``: ``method_a`` against ``method_b``."""

    def __init__(self, params="default", overrides=None, *, alpha: float = 0.05, method_a: str = "lrp_epsilon",
                 method_b: str = "smoothgrad", stage: int | None = None, common: float = COMMON):
        self.res = results(params, progress=False, **dict(overrides or {}))
        self.cfg, T = self.res.cfg, self.res.table
        self.stage, self.alpha, self.common = pick_stage(self.res, stage), alpha, float(common)
        self.C = T[(T.group == "correct") & (T.stage == self.stage)]
        self.methods = display.method_order(self.C) if len(self.C) else []
        self.a, self.b = method_a, method_b

    def setting(self) -> None:
        display.require(len(self.C) > 0, "The configuration has no correctly classified image", "-p n_correct 24")
        display.require(self.a in self.methods and self.b in self.methods and self.a != self.b,
                       f"The comparison needs two methods of the configuration ({', '.join(self.methods)}); "
                       f"method_a = {self.a!r} and method_b = {self.b!r} are not; set them in the chapter's parameters")
        display.show_markdown(
            f"**Setting.** {self.cfg.model}, stage {self.stage}, {self.C.image_id.nunique()} correctly classified "
            f"images; {thesis.label(self.a)} against {thesis.label(self.b)}. {display.censoring_note(self.C)}")

    def figure_5_1(self) -> None:
        """Figure 5.1: ε⁺(a) − ε⁺(b) on the images where ``a`` has the lower ε⁻, and the counts."""
        split, A, B = irrelevance_split(self.C, self.a, self.b), thesis.label(self.a), thesis.label(self.b)
        n_all = self.C.image_id.nunique()
        fig = charts.hist_kde(split["diff"], f"ε⁺({A}) − ε⁺({B})",
                              f"Images where {A} has the lower ε⁻: {len(split)} of {n_all} "
                              f"({int(split.censored.sum())} with a censored ε⁺)",
                              bins=min(30, max(5, len(split))))
        display.show_figure(fig)
        unknown = int(split.better.isna().sum())
        display.show_markdown(
            f"On these {len(split)} images {A}'s irrelevance is better (higher ε⁺) on **{int(split.better.sum())}**, "
            f"worse on **{int(split.worse.sum())}**, equal on {int(((split.better == 0) & (split.worse == 0)).sum())}"
            + (f", and censoring leaves the order unknown on {unknown}" if unknown else "") + ".")

    def flip_table(self) -> pd.DataFrame:
        return flip_table(self.C, self.alpha)

    def claims(self) -> cl.Claims:
        return cl.Claims(chapter_claims(self.C, self.a, self.b, self.common), alpha=self.alpha,
                         context=f"“Common” means more than {cl.fmt(self.common, 0, pct=True)} of the images; the "
                                 "thesis showed the histogram and gave no share, so the threshold is ours.")

    def verdicts(self) -> None:
        n = self.C.image_id.nunique()
        model = f"Our model is {self.cfg.model} on {n} images; the thesis measured VGG-16 on 5,000."
        self.claims().show(censored=display.censoring_note(self.C), model=model)
