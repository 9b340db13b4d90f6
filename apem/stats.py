"""Summaries and paired comparisons of the results table (Spearman's rho: :mod:`apem.correlation`).

The results table has one row per (image, method, stage) with, among others,
``image_id, method, stage, eps_minus, eps_plus, apem, censored_minus,
censored_plus, correct, loss, confidence``. ``apem = eps_plus - eps_minus``
(higher is better) and is NaN where an epsilon is undefined (an all-zero map
gives no direction).

Missing values
    Every function drops NaN values of the analysed column (per group, or per
    pair of methods for paired analyses) and reports how many values it used
    (``n``).

Censored values
    An epsilon search that reaches its bound without changing the prediction
    stores the *bound* and sets ``censored_minus`` / ``censored_plus``. The
    summaries keep that bound value as it is (no imputation, no dropping) and
    report the censored counts beside the statistics (``censored_minus``,
    ``censored_plus``, ``censored``). A censored ``eps_plus`` is a lower bound
    on the true one, so such an APEM is a lower bound as well (and a censored
    ``eps_minus`` makes it an upper bound): the mean is biased by them, while
    the median is unaffected as long as the censored values lie on the same
    side of it as their true values would -- read the counts before the
    numbers.

Verdicts
    are not decided here: every verdict of the book comes from :mod:`apem.claims`,
    where each claim's rule is declared before the data.

References
    Efron & Tibshirani (1993), *An Introduction to the Bootstrap*, ch. 13
    (percentile interval). Wilcoxon (1945); Pratt (1959) for zero differences.
    Kerby (2014), "The simple difference formula: an approach to teaching
    nonparametric correlation", *Comprehensive Psychology* 3 (matched-pairs
    rank-biserial correlation). Holm (1979), "A simple sequentially rejective
    multiple test procedure", *Scand. J. Statist.* 6.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats as sps


_STATS = {"mean": np.mean, "median": np.median}


# ----------------------------------------------------------------------------- bootstrap


def _as_stat(stat) -> tuple[Callable, str]:
    if isinstance(stat, str):
        if stat not in _STATS:
            raise ValueError(f"unknown statistic {stat!r}; use one of {sorted(_STATS)} or a callable")
        return _STATS[stat], stat
    return stat, getattr(stat, "__name__", "stat")


def _clean(values) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[~np.isnan(v)]


def bootstrap_ci(values, stat="mean", n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval: ``(estimate, low, high)``.

    ``estimate = stat(values)``; ``low, high`` are the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of ``stat`` over ``n_boot`` resamples (with
    replacement, same size) of the values (Efron & Tibshirani 1993, ch. 13).

    Implemented with :func:`scipy.stats.bootstrap` (``method="percentile"``,
    ``vectorized=True``: all resamples are drawn as one array and the
    statistic is evaluated along its last axis in one call), seeded with
    ``numpy.random.default_rng(seed)``. ``stat`` is ``"mean"``, ``"median"``,
    ``np.mean``, ``np.median`` or any callable taking ``axis=``.

    NaN values are dropped. With fewer than two values the interval is
    undefined and ``(estimate, nan, nan)`` comes back (``estimate`` is NaN for
    no values). A constant sample gives the degenerate interval
    ``(c, c, c)``.
    """
    fn, _ = _as_stat(stat)
    v = _clean(values)
    if v.size == 0:
        return (np.nan, np.nan, np.nan)
    est = float(fn(v))
    if v.size < 2:
        return (est, np.nan, np.nan)
    if np.all(v == v[0]):  # scipy warns on degenerate resamples; the answer is exact
        return (est, est, est)
    res = sps.bootstrap(
        (v,), fn, n_resamples=int(n_boot), confidence_level=level, method="percentile",
        vectorized=True, axis=-1, rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return (est, float(ci.low), float(ci.high))


# ----------------------------------------------------------------------------- summaries


def summary_table(df: pd.DataFrame, by=("method", "stage"), value: str = "apem", ci: bool = True,
                  n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean and median of ``value`` per group, with bootstrap intervals and counts.

    Columns: ``n`` (non-NaN values used), ``missing`` (NaN values),
    ``mean, mean_lo, mean_hi, median, median_lo, median_hi`` (the ``_lo/_hi``
    columns are :func:`bootstrap_ci` percentile intervals at ``level``; left
    out when ``ci=False``), and, when the table has the flags,
    ``censored_minus, censored_plus, censored`` (rows with either flag),
    counted over the rows whose ``value`` is not NaN. Censored values enter
    the statistics at their bound (see the module docstring). Thesis Tables
    4.2/4.4 are the ``mean`` and ``median`` columns.

    Every group is bootstrapped with the same ``seed``.
    """
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in df.groupby(by, sort=False, dropna=False):
        v = g[value].to_numpy(dtype=float)
        ok = ~np.isnan(v)
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["n"] = int(ok.sum())
        row["missing"] = int((~ok).sum())
        for name in ("mean", "median"):
            if ci:
                est, lo, hi = bootstrap_ci(v, name, n_boot=n_boot, level=level, seed=seed)
                row.update({name: est, f"{name}_lo": lo, f"{name}_hi": hi})
            else:
                row[name] = float(_STATS[name](v[ok])) if ok.any() else np.nan
        flags = [c for c in ("censored_minus", "censored_plus") if c in g]
        for c in flags:
            row[c] = int(g[c].to_numpy(dtype=bool)[ok].sum())
        if flags:
            row["censored"] = int(np.logical_or.reduce([g[c].to_numpy(dtype=bool) for c in flags])[ok].sum())
        row.update(censored_bounds(g, value))
        rows.append(row)
    return pd.DataFrame(rows).set_index(by)


# ----------------------------------------------------------------------------- censoring

#: which side of the stored value the true value lies on, per column, for each censoring flag:
#: +1 the stored value is a lower bound (true >= stored), -1 an upper bound
CENSORING = {
    "eps_minus": {"censored_minus": +1},
    "eps_plus": {"censored_plus": +1},
    "apem": {"censored_plus": +1, "censored_minus": -1},  # apem = eps_plus - eps_minus
}
EXACT, LOWER, UPPER, UNDETERMINED = "exact", "lower bound", "upper bound", "undetermined"


def censoring_sides(df: pd.DataFrame, value: str) -> np.ndarray:
    """Per row: 0 exact, +1 the stored ``value`` is a lower bound, -1 an upper bound, 2 unbounded both ways.

    Only ``eps_minus``, ``eps_plus`` and ``apem`` carry censoring (see :data:`CENSORING`); a
    row whose two searches were both censored has an APEM bounded on neither side.
    """
    side = np.zeros(len(df), dtype=int)
    for flag, sign in CENSORING.get(value, {}).items():
        if flag not in df:
            continue
        f = df[flag].to_numpy(dtype=bool)
        clash = f & (side != 0) & (side != sign)
        side = np.where(f & (side == 0), sign, side)
        side = np.where(clash, 2, side)
    return side


def censored(df: pd.DataFrame, value: str) -> pd.Series:
    """Per row: is the stored ``value`` censored (bounded on at least one side, :data:`CENSORING`)?

    APEM is censored when either of its searches reached the bound; a NaN value is not.
    """
    return pd.Series(censoring_sides(df, value) != 0, index=df.index) & df[value].notna()


def censored_counts(df: pd.DataFrame, value: str, by=("method",)) -> pd.Series:
    """How many values of ``value`` are censored, per group (``by``), groups in the order of the table."""
    by = [by] if isinstance(by, str) else list(by)
    return censored(df, value).groupby([df[b] for b in by], sort=False).sum().astype(int)


def censored_bounds(df: pd.DataFrame, value: str) -> dict:
    """What censoring leaves known of the mean and the median of ``value`` (NaN rows dropped).

    ``mean_bound``: ``"exact"`` (nothing censored), ``"lower bound"`` (some values are
    at least what is stored), ``"upper bound"``, or ``"undetermined"`` (both kinds).
    ``median_min`` / ``median_max``: the smallest and largest median the data allow,
    with every lower-bounded value free to grow to +inf and every upper-bounded one to
    fall to -inf; equal when censoring cannot move the median (fewer censored values
    than the distance of the median from the end they sit at). A rank test sees a
    censored epsilon at the bound, its lowest possible value, which is its right rank
    whenever the bound exceeds every uncensored value.
    """
    v = df[value].to_numpy(dtype=float)
    ok = ~np.isnan(v)
    side = censoring_sides(df, value)[ok]
    v = v[ok]
    if v.size == 0:
        return {"mean_bound": EXACT, "median_min": np.nan, "median_max": np.nan}
    lo = np.where((side == -1) | (side == 2), -np.inf, v)
    hi = np.where((side == 1) | (side == 2), np.inf, v)
    kinds = set(side[side != 0].tolist())
    mean_bound = EXACT if not kinds else LOWER if kinds == {1} else UPPER if kinds == {-1} else UNDETERMINED
    return {"mean_bound": mean_bound, "median_min": _median_inf(lo), "median_max": _median_inf(hi)}


def kaplan_meier(values, censored) -> "sps._survival.ECDFResult":
    """The Kaplan-Meier estimate of the distribution of an epsilon whose searches may be censored.

    ``values``: the stored epsilons (a censored search stores its bound); ``censored``: one flag per
    value. :func:`scipy.stats.ecdf` on :class:`scipy.stats.CensoredData` (right-censored) computes it;
    ``.sf`` is the survival function P(epsilon > t). (scipy is already a dependency; ``lifelines``
    would downgrade pandas, ``scikit-survival`` would add scikit-learn for this one estimator.)

    apem censors every search at one bound, above every uncensored epsilon, so the estimate equals the
    empirical distribution below the bound and tells nothing above it: the *restricted* mean up to the
    bound (:func:`restricted_mean`) is defined, the mean is not.
    """
    v = np.asarray(values, dtype=float)
    c = np.asarray(censored, dtype=bool)
    ok = ~np.isnan(v)
    v, c = v[ok], c[ok]
    if v.size == 0:
        raise ValueError("no values to estimate a distribution from")
    return sps.ecdf(sps.CensoredData(uncensored=v[~c], right=v[c]))


def restricted_mean(values, censored, bound: float) -> float:
    """The restricted mean up to ``bound``, E[min(epsilon, bound)]: the area under the Kaplan-Meier survival curve.

    Integrates :func:`kaplan_meier`'s step function from 0 to ``bound``. With every search censored
    at ``bound`` it equals the plain mean of the stored values (each stored value is min(epsilon,
    bound)): the book's "mean" of epsilons *is* this restricted mean, and the mean APEM is the
    difference of the two restricted means, E[min(eps_plus, bound)] - E[min(eps_minus, bound)].
    """
    km = kaplan_meier(values, censored)
    t = np.concatenate([[0.0], km.sf.quantiles[km.sf.quantiles < bound], [bound]])
    surv = km.sf.evaluate(t[:-1])  # right-continuous: the value on [t_i, t_i+1)
    return float(np.sum(surv * np.diff(t)))


def kaplan_meier_median(values, censored) -> float:
    """The median the Kaplan-Meier estimate gives: the smallest t with P(epsilon > t) <= 1/2; inf when censoring
    leaves more than half above the bound (the median is then only known to be at least the bound)."""
    km = kaplan_meier(values, censored)
    below = np.flatnonzero(km.sf.probabilities <= 0.5)
    if below.size == 0:
        return float("inf")
    return float(km.sf.quantiles[below[0]])


def _median_inf(v: np.ndarray) -> float:
    """The median, where infinities are allowed (the middle pair's mean, inf if either is)."""
    s = np.sort(v)
    n = s.size
    if n % 2:
        return float(s[n // 2])
    a, b = s[n // 2 - 1], s[n // 2]
    if np.isinf(a) or np.isinf(b):
        return float(a if np.isinf(a) else b)
    return float((a + b) / 2)


# ----------------------------------------------------------------------------- the best method

#: The thesis ranks methods by APEM, which it defines as the mean of eps_plus - eps_minus over the
#: images (section 3.3; Table 4.2 reports the mean and the median and both order the methods the
#: same way). With censored searches the book's mean is the restricted mean (every epsilon capped at
#: the bound, :func:`restricted_mean`), and it is named so wherever it ranks; the median's ranking is
#: shown beside it (:func:`ranking`). No claim is decided by a ranking: chapter 3's best method is the
#: thesis's, declared, and the data's is read from the paired tests.
BEST_BY = "mean"


def ranking(summary: pd.DataFrame) -> pd.DataFrame:
    """Each method's rank by the mean (the thesis's statistic) and by the median, from :func:`summary_table`.

    Columns ``mean, rank_mean, median, rank_median, mean_bound`` (rank 1 is the highest APEM),
    one row per method, sorted by the thesis's statistic.
    """
    out = summary[["mean", "median"]].copy()
    out["rank_mean"] = out["mean"].rank(ascending=False, method="min").astype(int)
    out["rank_median"] = out["median"].rank(ascending=False, method="min").astype(int)
    if "mean_bound" in summary:
        out["mean_bound"] = summary["mean_bound"]
    return out.sort_values("rank_mean")[[c for c in ("mean", "rank_mean", "median", "rank_median", "mean_bound")
                                         if c in out]]


def best_method(summary: pd.DataFrame, by: str = BEST_BY) -> str:
    """The method with the highest APEM by the thesis's statistic (:data:`BEST_BY`: the mean, restricted by the bound)."""
    col = summary[by].astype(float)
    if col.isna().all():
        raise ValueError("no method has a defined APEM")
    return col.idxmax()


# ----------------------------------------------------------------------------- paired data


def _paired_wide(df: pd.DataFrame, value: str, by: str, pair_on: str) -> pd.DataFrame:
    """One row per ``pair_on``, one column per level of ``by`` (order of appearance)."""
    dup = df.duplicated([pair_on, by])
    if dup.any():
        raise ValueError(
            f"{int(dup.sum())} duplicate ({pair_on}, {by}) rows: filter the table to one value of the "
            "other keys (e.g. one stage) or pass within=[...] to compare inside each group"
        )
    levels = list(pd.unique(df[by]))
    return df.pivot(index=pair_on, columns=by, values=value).reindex(columns=levels)


def _within_groups(df: pd.DataFrame, within):
    if within is None or (not isinstance(within, str) and len(within) == 0):
        yield {}, df
        return
    within = [within] if isinstance(within, str) else list(within)
    for key, g in df.groupby(within, sort=False):
        yield dict(zip(within, key if isinstance(key, tuple) else (key,))), g


def pairwise_outcomes(df: pd.DataFrame, value: str = "apem", by: str = "method", pair_on: str = "image_id",
                      higher_is_better: bool = True, within=None) -> pd.DataFrame:
    """Per-image wins, ties and losses for every ordered pair of ``by`` levels (thesis Figure 4.4).

    For the ordered pair ``(a, b)`` and the images where both have a value:
    ``better`` = fraction of images with ``a > b`` (``a < b`` when
    ``higher_is_better=False``, e.g. for ``eps_minus``), ``equal`` = fraction
    with ``a == b``, ``worse`` = the rest; ``n`` = number of such images. The
    row ``(b, a)`` mirrors ``(a, b)``. ``within`` (column names) repeats the
    comparison inside each group, e.g. ``within="stage"``.
    """
    rows = []
    for keys, g in _within_groups(df, within):
        wide = _paired_wide(g, value, by, pair_on)
        for a, b in itertools.permutations(wide.columns, 2):
            d = (wide[a] - wide[b]).dropna().to_numpy()
            if not higher_is_better:
                d = -d
            n = d.size
            frac = (lambda m: float(m.sum()) / n) if n else (lambda m: np.nan)
            rows.append({**keys, "a": a, "b": b, "n": n,
                         "better": frac(d > 0), "equal": frac(d == 0), "worse": frac(d < 0)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- separation of two groups


def _auroc(pos, neg, axis=-1):
    """P(a random ``pos`` value > a random ``neg`` value) + ½ P(tie): Mann-Whitney's U over ``n_pos · n_neg``."""
    u = sps.mannwhitneyu(pos, neg, axis=axis, method="asymptotic", use_continuity=False).statistic
    return u / (np.shape(pos)[axis] * np.shape(neg)[axis])


def auroc(pos, neg, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """How well a score separates two groups: the area under the ROC curve, with its interval and test.

    ``pos``: the scores of the group a high score should mark (e.g. APEM of correctly
    classified images), ``neg``: the other group's; one value per image, NaN dropped.
    ``auroc`` is the probability that a random ``pos`` image scores above a random ``neg``
    one, ties counted as one half: 1 separates them perfectly, 0.5 is chance, below 0.5 the
    score points the other way. It is Mann-Whitney's U statistic over ``n_pos · n_neg``
    (computed with :func:`scipy.stats.mannwhitneyu`; scikit-learn's ``roc_auc_score`` gives
    the same number but neither an interval nor a test). ``low``/``high``: percentile
    bootstrap resampling each group on its own (:func:`scipy.stats.bootstrap`, images the
    unit); ``p_greater``: the exact-where-possible one-sided Mann-Whitney p-value of
    ``auroc > 0.5``. Returns ``{"auroc", "low", "high", "p_greater", "n_pos", "n_neg"}``; NaN
    where a group is empty. At complete separation (``auroc`` 0 or 1) every resample gives the
    same value, so no interval is given (NaN): the p-value carries the evidence there.
    """
    p, q = _clean(pos), _clean(neg)
    out = {"auroc": np.nan, "low": np.nan, "high": np.nan, "p_greater": np.nan, "n_pos": p.size, "n_neg": q.size}
    if p.size == 0 or q.size == 0:
        return out
    out["auroc"] = float(_auroc(p, q))
    out["p_greater"] = float(sps.mannwhitneyu(p, q, alternative="greater").pvalue)
    if p.size >= 2 and q.size >= 2 and 0.0 < out["auroc"] < 1.0:
        ci = sps.bootstrap((p, q), _auroc, n_resamples=int(n_boot), confidence_level=level, method="percentile",
                           vectorized=True, axis=-1, rng=np.random.default_rng(seed)).confidence_interval
        out["low"], out["high"] = float(ci.low), float(ci.high)
    return out


def separation(df: pd.DataFrame, signals: dict, group: str = "group", positive: str = "correct",
               by=("method", "stage"), level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per ``by`` group and signal: how well it tells ``positive`` images from the rest (:func:`auroc`).

    ``signals``: display name -> ``(column, sign)``; ``sign`` +1 when a high value should mark a
    ``positive`` image (APEM, ε⁺, the model's confidence), -1 when a low one should (ε⁻, the loss).
    One row per (``by`` levels, signal) with the :func:`auroc` fields and ``censored`` (how many
    of the rows' values censoring bounds, :func:`censored`; a censored value enters at the bound,
    its right rank when the bound exceeds every uncensored value).
    """
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for keys, g in (df.groupby(by, sort=False) if by else [((), df)]):
        keys = keys if isinstance(keys, tuple) else (keys,)
        is_pos = (g[group] == positive).to_numpy()
        for name, (col, sign) in signals.items():
            v = sign * g[col].to_numpy(dtype=float)
            r = auroc(v[is_pos], v[~is_pos], level=level, n_boot=n_boot, seed=seed)
            cens = int(censored(g, col).sum()) if col in CENSORING else 0
            rows.append({**dict(zip(by, keys)), "signal": name, **r, "censored": cens})
    return pd.DataFrame(rows)
