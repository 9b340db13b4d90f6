"""Spearman's rho: of APEM with the loss per method and image group (thesis Table 5.3), with bootstrap intervals.

Also :func:`rank_correlation`, the vectorised rho that the sanity checks use
to compare maps. Reached as well through :mod:`apem.stats`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps


_GROUPS = {
    "correct": lambda d: d["correct"].astype(bool),
    "misclassified": lambda d: ~d["correct"].astype(bool),
    "all": lambda d: pd.Series(True, index=d.index),
}


def _spearman(x, y) -> dict:
    """``{"rho", "p", "n"}`` on the pairs where both are present."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    n = int(ok.sum())
    if n < 3 or np.all(x[ok] == x[ok][0]) or np.all(y[ok] == y[ok][0]):
        return {"rho": np.nan, "p": np.nan, "n": n}
    res = sps.spearmanr(x[ok], y[ok])
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": n}


def spearman_table(df: pd.DataFrame, groups: Sequence[str] | Mapping[str, Callable] = ("correct", "misclassified", "all"),
                   value: str = "apem", by: str = "method", against: str = "loss",
                   confidence: str | None = "confidence", pair_on: str = "image_id") -> pd.DataFrame:
    """Spearman's rho of ``value`` with ``against`` (the loss) per method and image group (thesis Table 5.3).

    Rows: every level of ``by`` (order of appearance), then ``"confidence"``
    -- the correlation of the top-class probability with the loss over the
    images (each image once) -- unless ``confidence=None``. Columns: a
    two-level index ``(group, stat)`` with ``stat`` in ``rho, p, n``; e.g.
    ``table.xs("rho", axis=1, level="stat")`` is Table 5.3.
    ``groups`` names the image subsets: ``"correct"``, ``"misclassified"``,
    ``"all"`` (by the boolean ``correct`` column), or a mapping
    ``name -> f(df) -> boolean mask``. ``rho`` is
    :func:`scipy.stats.spearmanr` on the pairs where both values are present
    (Pearson's r of the ranks, ties averaged); the two-sided ``p`` is its t
    approximation. Fewer than 3 pairs or a constant variable gives NaN.

    The table must hold one row per (``pair_on``, ``by``): filter to one
    stage first.
    """
    dup = df.duplicated([pair_on, by])
    if dup.any():
        raise ValueError(f"{int(dup.sum())} duplicate ({pair_on}, {by}) rows: filter to one stage first")
    sel = dict(groups) if isinstance(groups, Mapping) else {g: _GROUPS[g] for g in groups}
    rows = {lev: {} for lev in pd.unique(df[by])}
    if confidence is not None:
        rows["confidence"] = {}
    for gname, select in sel.items():
        sub = df[np.asarray(select(df), dtype=bool)]
        for lev in rows:
            if lev == "confidence" and confidence is not None:
                per_image = sub.drop_duplicates(pair_on)
                r = _spearman(per_image[confidence], per_image[against])
            else:
                d = sub[sub[by] == lev]
                r = _spearman(d[value], d[against])
            rows[lev].update({(gname, k): v for k, v in r.items()})
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["group", "stat"])
    return table


def rank_correlation(x, y, axis=-1):
    """Spearman's rho along ``axis`` (vectorised): Pearson's r of average-tie ranks; NaN where one side is constant."""
    rx = sps.rankdata(x, axis=axis)
    ry = sps.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    den = np.sqrt((rx**2).sum(axis=axis) * (ry**2).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=axis) / np.where(den > 0, den, 1.0), np.nan)


def spearman_ci(x, y, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Spearman's rho of paired ``x, y`` with a percentile bootstrap interval: ``(rho, low, high)``.

    Pairs with a NaN are dropped; the pairs are resampled together, all
    ``n_boot`` resamples drawn as one (n_boot, n) index array and ranked in one
    call. (Not :func:`scipy.stats.bootstrap`: a resample in which a variable
    is constant has an undefined rho, and scipy's percentile would turn the
    whole interval into NaN; here those resamples are left out of the
    quantiles.) Fewer than 3 pairs or a constant variable gives NaN.
    """
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    r = _spearman(x, y)["rho"]
    if np.isnan(r):
        return (np.nan, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(int(n_boot), x.size))
    boot = rank_correlation(x[idx], y[idx], axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(boot, [tail, 100 - tail]) if np.isfinite(boot).any() else (np.nan, np.nan)
    return (float(r), float(lo), float(hi))
