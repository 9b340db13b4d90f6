"""Chapter 6, the importance of irrelevance (thesis section 5.1, Figure 5.1).

The page (``notebooks/06_importance_of_irrelevance.md``) selects the correctly classified
images at one stage (the thesis's stage 3 by default), declares its claims and decides
them; this module holds what it calls. Two questions:

* among the images where ``method_a`` has the better (lower) ε⁻ than
  ``method_b``, is its ε⁺ sometimes better and sometimes worse (Figure 5.1,
  :func:`irrelevance_split`, :func:`figure_5_1`)?
* for every pair of methods, how often does ε⁻ alone pick another winner than
  APEM does (:func:`flips`, :func:`flip_table`)?

and the section's two side remarks: LRP-ε's maps are "more simplified" than SmoothGrad's
(:func:`top_share`, :func:`concentration`: how much of a map's mass its largest values hold),
and the two methods' ε⁻ distributions "resemble" each other (a per-image paired difference).

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

from apem import claims, stats, thesis
from apem.book import display
from apem.figures import charts

#: "common": a share of images above this, by default (the chapter parameter ``common_share``; ours)
COMMON = 0.10

#: "simplified": the share of a map's mass held by its largest ``TOP`` of values (ours, declared before the data)
TOP = 0.10


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
                     "ε⁻ alone picks the other winner": k, "share": claims.fmt(k / n if n else np.nan, 0, pct=True),
                     f"{claims.fmt(1 - alpha, 0, pct=True)} exact interval":
                         f"[{claims.fmt(lo, 0, pct=True)}, {claims.fmt(hi, 0, pct=True)}]" if n else "–"})
    return pd.DataFrame(rows).set_index("pair")


# ----------------------------------------------------------------------------- "more simplified" maps


def top_share(maps, share: float = TOP) -> np.ndarray:
    """Per map: the share of its L1 mass held by its ``k = ceil(share * size)`` largest absolute values.

    ``maps``: an array or tensor of maps, the first axis the maps (each map's other axes are flattened).
    A map that keeps one region and zeroes the rest puts all its mass in few values: 1 when at most ``k``
    values are nonzero; a constant map gives ``k / size`` (``share`` when it divides evenly); NaN for an
    all-zero map (no mass). Scale-free (a map times a constant has the same share), so the methods' maps
    are compared however each is scaled, and indifferent to where the values lie (unlike total
    variation, chapter 2's measure of speckle). Ties at the ``k``-th value do not matter: the sum of the
    ``k`` largest values is the same whichever of the tied ones are taken.
    """
    a = np.abs(np.asarray(maps, dtype=float)).reshape(len(maps), -1)
    k = int(np.ceil(share * a.shape[1]))
    if not 0 < share <= 1 or k < 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    top = -np.partition(-a, k - 1, axis=1)[:, :k]  # the k largest values of each map
    total = a.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, top.sum(axis=1) / total, np.nan)


def concentration(res, ids: list, methods: list, stage: int, share: float = TOP) -> pd.DataFrame:
    """:func:`top_share` of each stored map (``res.map``, the chapter's ``stage``): one row per image of ``ids``,
    one column per method of ``methods``."""
    out = {}
    for m in methods:
        out[m] = top_share(np.stack([res.map(i, m, stage).numpy() for i in ids]), share) if ids else []
    return pd.DataFrame(out, index=pd.Index(ids, name="image_id"))


def concentration_table(conc: pd.DataFrame, share: float = TOP) -> pd.DataFrame:
    """Per method: images, the median, quartiles and range of :func:`top_share` (formatted as percentages)."""
    rows = []
    for m in conc:
        v = conc[m].dropna()
        q = v.quantile([0.0, 0.25, 0.5, 0.75, 1.0]).to_numpy() if len(v) else [np.nan] * 5
        rows.append({"method": thesis.label(m), "images": int(v.size),
                     f"median share of the mass in the top {claims.fmt(share, 0, pct=True)}": claims.fmt(q[2], 1, pct=True),
                     "quartiles": f"{claims.fmt(q[1], 1, pct=True)} – {claims.fmt(q[3], 1, pct=True)}",
                     "range": f"{claims.fmt(q[0], 1, pct=True)} – {claims.fmt(q[4], 1, pct=True)}"})
    return pd.DataFrame(rows).set_index("method")


def eps_minus_difference(C: pd.DataFrame, a: str, b: str) -> pd.Series:
    """Per image: ε⁻(a) − ε⁻(b) (one value per image, NaN where either is missing); a censored ε⁻ enters at its bound,
    so two censored values give a tie (0)."""
    v = claims.per_group(C, "eps_minus")
    if isinstance(v[a], claims.Missing) or isinstance(v[b], claims.Missing):
        return pd.Series(dtype=float)
    return (v[a] - v[b]).dropna()


def eps_minus_table(C: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """ε⁻ of ``a``, of ``b`` and their per-image difference (:func:`eps_minus_difference`): images, censored, median,
    quartiles (formatted)."""
    v, cens = claims.per_group(C, "eps_minus"), claims.censored_of(C, "eps_minus")
    rows = []
    for name, x, c in ((f"ε⁻ {thesis.label(a)}", v[a], cens[a]), (f"ε⁻ {thesis.label(b)}", v[b], cens[b]),
                       (f"ε⁻({thesis.label(a)}) − ε⁻({thesis.label(b)})", eps_minus_difference(C, a, b),
                        cens[a] | cens[b])):
        x = x.dropna()
        q = x.quantile([0.25, 0.5, 0.75]).to_numpy() if len(x) else [np.nan] * 3
        rows.append({"": name, "images": int(x.size), "censored": int(c.reindex(x.index).fillna(False).sum()),
                     "median": claims.fmt(q[1], 1), "quartiles": f"{claims.fmt(q[0], 1)} – {claims.fmt(q[2], 1)}"})
    return pd.DataFrame(rows).set_index("")


# ----------------------------------------------------------------------------- figure and prose


def figure_5_1(C: pd.DataFrame, a: str, b: str):
    """Figure 5.1: the histogram of ε⁺(a) − ε⁺(b) on the images where ``a`` has the lower ε⁻ (for certain)."""
    split, A, B = irrelevance_split(C, a, b), thesis.label(a), thesis.label(b)
    return charts.hist_kde(split["diff"], f"ε⁺({A}) − ε⁺({B})",
                           f"Images where {A} has the lower ε⁻: {len(split)} of {C.image_id.nunique()} "
                           f"({int(split.censored.sum())} with a censored ε⁺)",
                           bins=min(30, max(5, len(split))))


def split_counts(split: pd.DataFrame) -> dict[str, int]:
    """The outcomes of :func:`irrelevance_split`: ``images``, ``better``, ``worse``, ``equal`` and ``unknown``
    (censoring leaves the order of the ε⁺ unknown)."""
    return {"images": len(split), "better": int(split.better.sum()), "worse": int(split.worse.sum()),
            "equal": int(((split.better == 0) & (split.worse == 0)).sum()), "unknown": int(split.better.isna().sum())}


# ----------------------------------------------------------------------------- exercises


def exercise_values(C: pd.DataFrame, a: str = "lrp_epsilon", b: str = "smoothgrad", common: float = COMMON
                    ) -> dict[str, str]:
    """The numbers the exercises' solutions quote (name -> text), on the correct images ``C`` at one stage,
    ``a`` against ``b`` (the chapter's ``method_a``, ``method_b``) and the threshold ``common``."""
    methods = display.method_order(C) if len(C) else []
    rows = []
    for x, y in (("gradient", "smoothgrad"), (a, b)):
        if x in methods and y in methods:
            f = flips(C, x, y)
            rows.append(f"{int(f.sum())} of {int(f.notna().sum())}")
        else:
            rows.append("– (a method is not in this configuration)")
    return {"ex06_flips_grad_sg": rows[0], "ex06_flips_ab": rows[1], "ex06_a": thesis.label(a),
            "ex06_b": thesis.label(b), "ex06_common": claims.fmt(common, 0, pct=True)}
