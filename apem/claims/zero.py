"""The thesis's "is zero" statements and the comparisons shown but never tested.

A test cannot show a value to be exactly zero without a declared equivalence margin, so
:class:`Vanishes` (a correlation) and :class:`ZeroMedian` (a median) are never held: they
are *not held* when a two-sided test finds the value nonzero, *inconclusive* otherwise --
one rule for the thesis's "virtually vanishes" (chapter 9) and "median 0 for every case"
(chapter 7). :class:`SameShape` applies the same rule to "two groups' distributions are similar": never
held, not held when a two-sided Kolmogorov-Smirnov test finds them different. :class:`NoneNonzero` joins
such parts; :class:`Descriptive` is shown, never tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from apem.claims.base import Claim, Evidence, as_series, z_score, fmt
from apem.claims.kinds import AllOf, Correlation, binom_needed, median_of, smallest_p, spearman_p


# ----------------------------------------------------------------------------- zero, and untested


@dataclass
class Vanishes(Correlation):
    """"Spearman's rho between ``x`` and ``y`` is (virtually) zero".

    A test cannot show a correlation to be zero (that would need a declared
    equivalence margin), so this claim is never held: it is **not held** when a
    two-sided test of Spearman's rho finds it nonzero (Holm-adjusted), and
    **inconclusive** otherwise. "Images needed": at the observed rho, the images
    at which the two-sided test would find it nonzero with the family's power.
    """

    def evaluate(self, alpha, power):
        ev = super().evaluate(alpha, power)
        if ev.applicable and ev.n < 3:
            return Evidence(ev.n, "–", applicable=False, reason=f"{ev.n} image(s): Spearman's ρ needs at least 3")
        if not ev.applicable:
            return ev
        x, y = as_series(self.x, self.text), as_series(self.y, self.text)
        both = pd.concat([x.rename("x"), y.rename("y")], axis=1).dropna()
        rho = float(sps.spearmanr(both.x, both.y).statistic)
        p = spearman_p(both.x, both.y)
        r = min(abs(rho), 0.9999)
        q = float(sps.norm.ppf(1 - alpha / 2)) + float(sps.norm.ppf(power))
        needed = math.inf if rho == 0 else float(math.ceil((1 + r * r / 2) * (q / math.atanh(r)) ** 2 + 3))
        return Evidence(ev.n, ev.estimate, p_for=np.nan, p_against=p, needed=needed,
                        direction=-1 if rho != 0 else 0, p_min_against=smallest_p("spearman-two-sided", ev.n))

    def rule(self, alpha):
        return (f"never held (no test shows a correlation to be zero without a declared margin); not held when a "
                f"two-sided test of Spearman's ρ finds it nonzero (Holm-adjusted p < {alpha}); inconclusive otherwise")


@dataclass
class ZeroMedian(Claim):
    """"The median of ``values`` is 0" (e.g. the thesis's "median 0 for every case" of shuffled maps).

    Like :class:`Vanishes`, a test cannot show a value to be exactly zero, so this claim is never held:
    it is **not held** when a two-sided exact sign test (positives against negatives, zeros dropped)
    finds the median nonzero (Holm-adjusted), and **inconclusive** otherwise: the one rule the book
    uses for the thesis's "is zero" statements.
    """

    values: object = None
    what: str = "value"
    digits: int = 1

    def evaluate(self, alpha, power):
        v = as_series(self.values, self.text).dropna().to_numpy(float)
        n = int(v.size)
        if n == 0:
            return Evidence(0, "–")
        pos, zero, neg = int((v > 0).sum()), int((v == 0).sum()), int((v < 0).sum())
        est = (f"median {self.what} {median_of(float(np.median(v)), self.digits)}; above 0 on {pos}, exactly 0 on {zero}, "
               f"below 0 on {neg} of {n} images")
        p_min = min(1.0, 2 * 0.5 ** n)  # the two-sided sign test's, all images on one side
        if pos + neg == 0:
            return Evidence(n, est, np.nan, 1.0, math.inf, direction=0, p_min_against=p_min)
        p = float(sps.binomtest(pos, pos + neg, 0.5).pvalue)
        share = max(pos, neg) / (pos + neg)
        needed = math.inf if pos == neg else float(math.ceil(
            binom_needed(share, 0.5, alpha / 2, power) / ((pos + neg) / n)))
        return Evidence(n, est, p_for=np.nan, p_against=p, needed=needed, direction=-1 if pos != neg else 0,
                        p_min_against=p_min)

    def rule(self, alpha):
        return (f"never held (no test shows a median to be exactly 0); not held when a two-sided exact sign test "
                f"finds the median of the {self.what} nonzero (Holm-adjusted p < {alpha}); inconclusive otherwise")


def ks_smallest_p(n: int, m: int) -> float:
    """The smallest two-sided p-value of the exact two-sample Kolmogorov-Smirnov test on samples of ``n`` and ``m``:
    that of completely separated samples (distance 1, either group below the other), ``2 / C(n + m, n)``."""
    if n <= 0 or m <= 0:
        return 1.0
    return min(1.0, 2.0 / math.comb(n + m, n))


def ks_needed(d: float, n: int, m: int, alpha: float, power: float) -> float:
    """Images (both groups, in the ratio ``n : m``) at which a two-sided KS test at ``alpha`` finds a true distance
    ``d`` with probability about ``power``: the effective size ``k = nm / (n + m)`` with ``sqrt(k) d`` at the
    Kolmogorov quantile plus ``z_power`` standard deviations of ``sqrt(k) D``, taken as at most 1/2 (the
    standard deviation of an empirical distribution function's value); an approximation. ``inf`` when ``d = 0``."""
    if d <= 0 or n <= 0 or m <= 0:
        return math.inf
    k = ((float(sps.kstwobign.ppf(1 - alpha)) + 0.5 * z_score(power)) / d) ** 2
    return float(math.ceil(k * (n + m) ** 2 / (n * m)))


@dataclass
class SameShape(Claim):
    """"The values of group ``a`` and of group ``b`` (different images) have similarly shaped distributions".

    With ``scale=True`` (the default) each group's values are divided by the group's own median first, so a
    distribution that is the other one shrunk (every value a fixed fraction of it) has the same shape: the
    claim compares shapes, not locations (a group whose median is not positive has no scale: not
    applicable). Like :class:`ZeroMedian`, a test cannot show two distributions to be the same, so this claim
    is never held: it is **not held** when a two-sided two-sample Kolmogorov-Smirnov test
    (:func:`scipy.stats.ks_2samp`, exact at these sizes) finds the distributions different (Holm-adjusted),
    and **inconclusive** otherwise. Dividing by an estimated median makes the test conservative (the two
    scaled samples share their median, 1). Its smallest p is at most :func:`ks_smallest_p` (scaling makes
    complete separation impossible, so this is a lower bound); "images needed": :func:`ks_needed`.
    """

    a: object = None
    b: object = None
    scale: bool = True
    names: tuple = ("a", "b")
    what: str = "value"
    digits: int = 2

    def evaluate(self, alpha, power):
        a = as_series(self.a, self.text).dropna().to_numpy(float)
        b = as_series(self.b, self.text).dropna().to_numpy(float)
        n = int(a.size + b.size)
        if a.size == 0 or b.size == 0:
            return Evidence(0, "–")
        na, nb = self.names
        scaled = ""
        if self.scale:
            ma, mb = float(np.median(a)), float(np.median(b))
            if ma <= 0 or mb <= 0:
                return Evidence(n, "–", applicable=False,
                                reason=f"a group's median {self.what} is not positive ({na} {fmt(ma, 1)}, {nb} "
                                       f"{fmt(mb, 1)}): no scale to divide by")
            a, b = a / ma, b / mb
            scaled = f", each divided by its median ({fmt(ma, 1)}, {fmt(mb, 1)})"
        ks = sps.ks_2samp(a, b, alternative="two-sided")
        d, p = float(ks.statistic), float(ks.pvalue)
        est = (f"KS distance {fmt(d, self.digits)} between {na} ({a.size} images) and {nb} ({b.size} images)"
               f"{scaled}")
        return Evidence(n, est, p_for=np.nan, p_against=p, needed=ks_needed(d, a.size, b.size, alpha, power),
                        direction=-1 if d > 0 else 0, p_min_against=ks_smallest_p(int(a.size), int(b.size)))

    def rule(self, alpha):
        how = " of each group's values divided by its own median (shapes, not locations)" if self.scale else ""
        return (f"never held (no test shows two distributions to be the same); not held when a two-sided "
                f"two-sample Kolmogorov-Smirnov test{how} finds the distributions of the {self.what} different "
                f"(Holm-adjusted p < {alpha}); inconclusive otherwise")


@dataclass
class NoneNonzero(AllOf):
    """Every part is a :class:`Vanishes` or :class:`ZeroMedian`: never held, not held when any part is,
    inconclusive otherwise."""

    def rule(self, alpha):
        return (f"never held; not held when any of its {len(self.parts())} parts is not held (a value found "
                "nonzero), inconclusive otherwise")


@dataclass
class Descriptive(Claim):
    """A comparison shown but not tested: always ``not applicable``; ``why`` says why no test is declared,
    ``reason`` (what the table prints) carries the numbers."""

    why: str = ""

    def evaluate(self, alpha, power):  # pragma: no cover - never evaluated (applicable is False)
        return Evidence(0, "–", applicable=False, reason=self.reason)

    def rule(self, alpha):
        return f"descriptive, never tested: {self.why}; the numbers are shown as they are"

    def __post_init__(self):
        self.applicable = False
