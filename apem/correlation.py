"""Spearman's rho: of APEM with the loss per method and image group (thesis Table 5.3), and its interval.

:func:`spearman_table` computes Table 5.3 (chapter 9); :func:`spearman_interval`
is the one interval of a Spearman correlation in apem (Fisher's z with Bonett and
Wright's variance): the table prints it, and :class:`apem.claims.Correlation`
prints it beside its verdict. :func:`rank_correlation` is the vectorised rho
that the randomisation checks use to compare maps.

References: Spearman (1904); Bonett and Wright (2000), "Sample size requirements for
estimating Pearson, Kendall and Spearman correlations", *Psychometrika* 65.
"""

from __future__ import annotations

import math
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


def spearman_interval(rho: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    r"""The ``1 - alpha`` interval of Spearman's ``rho`` on ``n`` pairs: Fisher's z with Bonett and Wright's variance.

    .. math::

        \tanh\Bigl(\operatorname{artanh} \rho \mp z_{1-\alpha/2}\,
        \sqrt{\tfrac{1 + \rho^2 / 2}{n - 3}}\Bigr)

    with ``rho`` clipped to ``[-0.9999, 0.9999]`` (so that ``artanh`` is finite).
    ``(nan, nan)`` when ``rho`` is undefined or ``n <= 3``.
    """
    if not np.isfinite(rho) or n <= 3:
        return (np.nan, np.nan)
    r = min(max(float(rho), -0.9999), 0.9999)
    se = math.sqrt((1 + r * r / 2) / (n - 3))
    z, q = math.atanh(r), float(sps.norm.ppf(1 - alpha / 2))
    return (math.tanh(z - q * se), math.tanh(z + q * se))


def spearman_table(df: pd.DataFrame, groups: Sequence[str] | Mapping[str, Callable] = ("correct", "misclassified", "all"),
                   value: str = "apem", by: str = "method", against: str = "loss",
                   confidence: str | None = "confidence", pair_on: str = "image_id",
                   alpha: float | None = None) -> pd.DataFrame:
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
    approximation. Fewer than 3 pairs or a constant variable gives NaN. With
    ``alpha``, each group also has ``lo, hi``: :func:`spearman_interval` at
    level ``1 - alpha``.

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
            if alpha is not None:
                r["lo"], r["hi"] = spearman_interval(r["rho"], r["n"], alpha)
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
