"""The claim kinds: proportions, paired and one-sample tests, two groups, correlation, invariants, compounds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from apem.claims.base import HELD, MAX_N, NOT_HELD, Claim, Evidence, as_series, z_score, fmt
from apem.correlation import spearman_interval


def median_of(x: float, digits: int) -> str:
    """A median for an estimate: with ``digits=0``, a median halfway between two integers keeps its ``.5``
    (medians of epsilons 1.5 and 0.5 printed as 2 and 0 read as a rounding error)."""
    return fmt(x, 1 if digits == 0 and math.isfinite(x) and x != round(x) else digits)


# ----------------------------------------------------------------------------- the smallest p a test can reach


def smallest_p(test: str, n: int, n_b: int = 0, threshold: float = 0.5, above: bool = True) -> float:
    """The smallest one-sided p-value *for* a claim that ``test`` can give at its sample size, whatever the data.

    What decides whether any data could decide a claim (:class:`~apem.claims.Claims` keeps a claim whose
    test cannot reach its level under Holm's correction out of the tests, as *undecidable at this n*):

    * ``"binomial"``: ``n`` outcomes, the share claimed above ``threshold`` ``t`` (``above=False``: below):
      all on the claimed side, ``t^n`` (``(1 - t)^n``);
    * ``"wilcoxon"``, ``"sign"``: ``n`` paired differences, all of one sign: ``2^-n`` (exact null);
    * ``"mann-whitney"``: groups of ``n`` and ``n_b`` completely separated: ``1 / C(n + n_b, n)``;
    * ``"spearman"``: one of the ``n!`` orderings: ``1 / n!`` (the exact permutation test;
      :class:`Correlation` uses it up to :data:`EXACT_SPEARMAN_N` images);
    * ``"spearman-two-sided"``: ``2 / n!``.
    """
    if n <= 0:
        return 1.0
    if test == "binomial":
        return float(threshold ** n if above else (1 - threshold) ** n)
    if test in ("wilcoxon", "sign"):
        return float(0.5 ** n)
    if test == "mann-whitney":
        return 1.0 / math.comb(n + n_b, n) if n_b > 0 else 1.0
    if test in ("spearman", "spearman-two-sided"):
        k = 2.0 if test.endswith("two-sided") else 1.0
        return min(1.0, k / math.factorial(n)) if n < 171 else 0.0
    raise ValueError(f"unknown test {test!r}")


# ----------------------------------------------------------------------------- proportions


def binom_needed(p_hat: float, p0: float, alpha: float, power: float) -> float:
    """Smallest n whose one-sided exact test of p <= p0 rejects with probability >= power when p = p_hat."""
    if p_hat <= p0:
        return math.inf
    hi = 64
    while hi <= MAX_N:
        ns = np.arange(1, hi + 1)
        k_crit = sps.binom.isf(alpha, ns, p0)  # reject when X > k_crit  (P(X > k_crit | p0) <= alpha)
        pw = sps.binom.sf(k_crit, ns, p_hat)
        ok = np.flatnonzero(pw >= power)
        if ok.size:
            return float(ns[ok[0]])
        hi *= 8
    return MAX_N + 1.0


@dataclass
class Proportion(Claim):
    """"The share of images with a property is above (or below) ``threshold``".

    ``outcomes``: one boolean per image (a Series indexed by image, or an array).
    Test: exact one-sided binomial test of the share against ``threshold``;
    interval: Clopper-Pearson at ``1 - alpha``.
    """

    outcomes: object = None
    threshold: float = 0.5
    above: bool = True
    what: str = "images"

    def evaluate(self, alpha, power):
        v = as_series(self.outcomes, self.text).dropna()
        n, k = int(v.size), int(v.astype(bool).sum())
        if n == 0:
            return Evidence(0, "–")
        ci = sps.binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="exact")
        p_gt = sps.binomtest(k, n, self.threshold, alternative="greater").pvalue
        p_lt = sps.binomtest(k, n, self.threshold, alternative="less").pvalue
        p_for, p_against = (p_gt, p_lt) if self.above else (p_lt, p_gt)
        share = k / n
        direction = int(np.sign(share - self.threshold)) * (1 if self.above else -1)
        # images needed, in the direction the data point: as a test of the claimed side's count
        if self.above:
            needed = binom_needed(share, self.threshold, alpha, power) if direction > 0 else \
                binom_needed(1 - share, 1 - self.threshold, alpha, power)
        else:
            needed = binom_needed(1 - share, 1 - self.threshold, alpha, power) if direction > 0 else \
                binom_needed(share, self.threshold, alpha, power)
        est = f"{k}/{n} {self.what} = {fmt(share, 1, pct=True)} [{fmt(ci.low, 1, pct=True)}, {fmt(ci.high, 1, pct=True)}]"
        return Evidence(n, est, p_for, p_against, needed, direction=direction,
                        p_min=smallest_p("binomial", n, threshold=self.threshold, above=self.above),
                        p_min_against=smallest_p("binomial", n, threshold=self.threshold, above=not self.above))

    def rule(self, alpha):
        side = "above" if self.above else "below"
        return (f"held when an exact one-sided binomial test finds the share of {self.what} {side} "
                f"{fmt(self.threshold, 1, pct=True)} (Holm-adjusted p < {alpha}); not held when it finds it on the "
                f"other side; interval: Clopper-Pearson {fmt(1 - alpha, 0, pct=True)}")


# ----------------------------------------------------------------------------- paired, per image


def _walsh_p(d: np.ndarray) -> float:
    """P(D_i + D_j > 0) over i <= j (+1/2 for zero sums): Noether's effect for the signed-rank test."""
    s = d[:, None] + d[None, :]
    iu = np.triu_indices(d.size)
    w = s[iu]
    return float(((w > 0).sum() + 0.5 * (w == 0).sum()) / w.size)


def _noether_signed_rank(d: np.ndarray, alpha: float, power: float) -> float:
    """Noether (1987): n = (z_{1-a} + z_{power})^2 / (3 (p' - 1/2)^2), inflated for ties (zeros dropped)."""
    nz = d[d != 0]
    if nz.size == 0:
        return math.inf
    p = _walsh_p(nz)
    if p == 0.5:
        return math.inf
    n = (z_score(1 - alpha) + z_score(power)) ** 2 / (3 * (p - 0.5) ** 2)
    return float(math.ceil(n / (nz.size / d.size)))


@dataclass
class Paired(Claim):
    """"``a`` is greater (``greater=False``: smaller) than ``b`` on the same images".

    ``a``, ``b``: one value per image (Series indexed by image; :func:`per_image`
    aggregates maps). Images where either is missing are left out. Test:
    one-sided Wilcoxon signed-rank test of ``a - b``, ties (zero differences)
    dropped (``test="sign"``: the exact sign test on wins and losses).
    """

    a: object = None
    b: object = None
    greater: bool = True
    test: str = "wilcoxon"
    names: tuple = ("a", "b")
    digits: int = 1

    def _d(self):
        a, b = as_series(self.a, self.text), as_series(self.b, self.text)
        both = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
        return (both.a - both.b).to_numpy(float), both

    def evaluate(self, alpha, power):
        if self.test not in ("wilcoxon", "sign"):
            raise ValueError(f"unknown paired test {self.test!r}")
        d, both = self._d()
        n = int(d.size)
        if n == 0:
            return Evidence(0, "–")
        wins, ties, losses = int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum())
        if not self.greater:
            wins, losses = losses, wins
        na, nb = self.names
        est = (f"median {na} {median_of(float(both.a.median()), self.digits)} vs {nb} "
               f"{median_of(float(both.b.median()), self.digits)}; "
               f"claimed side on {wins}, tie on {ties}, other side on {losses} of {n} images")
        p_min = smallest_p(self.test, n)
        if wins + losses == 0:
            return Evidence(n, est, 1.0, 1.0, math.inf, direction=0, p_min=p_min, p_min_against=p_min)
        if self.test == "sign":
            p_for = sps.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue
            p_against = sps.binomtest(wins, wins + losses, 0.5, alternative="less").pvalue
            share = max(wins, losses) / (wins + losses)
            needed = binom_needed(share, 0.5, alpha, power)
            needed = math.inf if wins == losses else float(math.ceil(needed / ((wins + losses) / n)))
        else:
            alt_for = "greater" if self.greater else "less"
            alt_against = "less" if self.greater else "greater"
            p_for = float(sps.wilcoxon(d, zero_method="wilcox", alternative=alt_for).pvalue)
            p_against = float(sps.wilcoxon(d, zero_method="wilcox", alternative=alt_against).pvalue)
            needed = _noether_signed_rank(d, alpha, power)
        direction = int(np.sign(wins - losses)) if self.test == "sign" else int(np.sign(p_against - p_for))
        return Evidence(n, est, p_for, p_against, needed, direction=direction, p_min=p_min, p_min_against=p_min)

    def rule(self, alpha):
        rel = "greater" if self.greater else "smaller"
        na, nb = self.names
        test = ("one-sided Wilcoxon signed-rank test (per image, ties dropped)" if self.test == "wilcoxon"
                else "one-sided exact sign test (wins against losses per image, ties dropped)")
        return f"held when a {test} finds {na} {rel} than {nb} (Holm-adjusted p < {alpha}); not held when it finds the opposite"


# ----------------------------------------------------------------------------- one sample


@dataclass
class Location(Claim):
    """"The typical per-image value is above (``greater=False``: below) ``threshold``".

    ``values``: one per image. Test: one-sided Wilcoxon signed-rank test of
    ``value - threshold`` (ties dropped); interval: the distribution-free
    order-statistic interval of the median (:func:`scipy.stats.quantile_test`).
    """

    values: object = None
    threshold: float = 0.0
    greater: bool = True
    what: str = "value"
    digits: int = 2

    def evaluate(self, alpha, power):
        v = as_series(self.values, self.text).dropna().to_numpy(float)
        n = int(v.size)
        if n == 0:
            return Evidence(0, "–")
        d = v - self.threshold
        med = float(np.median(v))
        try:
            ci = sps.quantile_test(v, q=med, p=0.5).confidence_interval(1 - alpha)
            lo, hi = float(ci.low), float(ci.high)
        except ValueError:
            lo = hi = np.nan
        interval = f" [{fmt(lo, self.digits)}, {fmt(hi, self.digits)}]" if np.isfinite(lo) and np.isfinite(hi) else \
            " (interval unbounded at this n)"
        est = f"median {self.what} {fmt(med, self.digits)}{interval}; mean {fmt(float(v.mean()), self.digits)}"
        if not (d != 0).any():
            return Evidence(n, est, 1.0, 1.0, math.inf, direction=0, p_min=smallest_p("wilcoxon", n),
                            p_min_against=smallest_p("wilcoxon", n))
        alt_for, alt_against = ("greater", "less") if self.greater else ("less", "greater")
        p_for = float(sps.wilcoxon(d, zero_method="wilcox", alternative=alt_for).pvalue)
        p_against = float(sps.wilcoxon(d, zero_method="wilcox", alternative=alt_against).pvalue)
        return Evidence(n, est, p_for, p_against, _noether_signed_rank(d, alpha, power),
                        direction=int(np.sign(p_against - p_for)), p_min=smallest_p("wilcoxon", n),
                        p_min_against=smallest_p("wilcoxon", n))

    def rule(self, alpha):
        side = "above" if self.greater else "below"
        return (f"held when a one-sided Wilcoxon signed-rank test (per image) finds the {self.what} {side} "
                f"{fmt(self.threshold, self.digits)} (Holm-adjusted p < {alpha}); not held when it finds the opposite; "
                f"interval: distribution-free {fmt(1 - alpha, 0, pct=True)} interval of the median")


# ----------------------------------------------------------------------------- two groups of images


@dataclass
class TwoGroups(Claim):
    """"Values on the images of group ``a`` are greater (``greater=False``: smaller) than on group ``b``".

    Different images in the two groups. Test: one-sided Mann-Whitney U; effect:
    the probability of superiority P(a > b) + P(a = b)/2.
    """

    a: object = None
    b: object = None
    greater: bool = True
    names: tuple = ("a", "b")
    digits: int = 1

    def evaluate(self, alpha, power):
        a = as_series(self.a, self.text).dropna().to_numpy(float)
        b = as_series(self.b, self.text).dropna().to_numpy(float)
        n = int(a.size + b.size)
        if a.size == 0 or b.size == 0:
            return Evidence(0, "–")
        alt_for, alt_against = ("greater", "less") if self.greater else ("less", "greater")
        u = sps.mannwhitneyu(a, b, alternative=alt_for)
        p_for = float(u.pvalue)
        p_against = float(sps.mannwhitneyu(a, b, alternative=alt_against).pvalue)
        ps = float(sps.mannwhitneyu(a, b).statistic) / (a.size * b.size)  # P(a > b) + P(a = b)/2
        na, nb = self.names
        est = (f"median {na} {median_of(float(np.median(a)), self.digits)} ({a.size} images) vs {nb} "
               f"{median_of(float(np.median(b)), self.digits)} ({b.size} images); P({na} > {nb}) = {fmt(ps, 2)}")
        if ps == 0.5:
            needed = math.inf
        else:  # Noether (1987): N = (z_a + z_b)^2 / (12 c (1 - c) (p - 1/2)^2)
            c = a.size / n
            needed = float(math.ceil((z_score(1 - alpha) + z_score(power)) ** 2 / (12 * c * (1 - c) * (ps - 0.5) ** 2)))
        direction = int(np.sign(ps - 0.5)) * (1 if self.greater else -1)
        return Evidence(n, est, p_for, p_against, needed, direction=direction,
                        p_min=smallest_p("mann-whitney", int(a.size), int(b.size)),
                        p_min_against=smallest_p("mann-whitney", int(a.size), int(b.size)))

    def rule(self, alpha):
        rel = "greater" if self.greater else "smaller"
        na, nb = self.names
        return (f"held when a one-sided Mann-Whitney U test finds {na} {rel} than {nb} (Holm-adjusted p < {alpha}); "
                "not held when it finds the opposite")


# ----------------------------------------------------------------------------- correlation

#: up to this many images Spearman's p-value is the exact permutation one (n! orderings); above, scipy's
#: Student-t approximation. The approximation gives p = 0 at rho = +-1 whatever n, so on 3 images it would
#: "decide" a claim the exact test cannot (its smallest p there is 1/3! = 0.17).
EXACT_SPEARMAN_N = 8


def spearman_p(x, y, alternative: str = "two-sided") -> float:
    """Spearman's p-value: exact (all ``n!`` permutations of ``y``) up to :data:`EXACT_SPEARMAN_N` pairs, else t.

    The exact test uses :func:`scipy.stats.permutation_test` (``permutation_type="pairings"``), which
    enumerates every pairing when there are fewer of them than ``n_resamples``.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size > EXACT_SPEARMAN_N:
        return float(sps.spearmanr(x, y, alternative=alternative).pvalue)
    rx = sps.rankdata(x)
    rx = (rx - rx.mean()) / np.sqrt(((rx - rx.mean()) ** 2).sum())

    def rho(y_, axis=-1):  # Pearson's r of the ranks, vectorised over permutations
        ry = sps.rankdata(y_, axis=axis)
        ry = ry - ry.mean(axis=axis, keepdims=True)
        norm = np.sqrt((ry ** 2).sum(axis=axis))
        with np.errstate(invalid="ignore", divide="ignore"):
            return (ry * rx).sum(axis=axis) / norm

    res = sps.permutation_test((y,), rho, permutation_type="pairings", alternative=alternative, vectorized=True,
                               n_resamples=math.factorial(x.size))
    return float(res.pvalue)


@dataclass
class Correlation(Claim):
    """"Spearman's rho between ``x`` and ``y`` (one pair per image) is positive (``negative=True``: negative)"."""

    x: object = None
    y: object = None
    negative: bool = False
    names: tuple = ("x", "y")

    def evaluate(self, alpha, power):
        x, y = as_series(self.x, self.text), as_series(self.y, self.text)
        both = pd.concat([x.rename("x"), y.rename("y")], axis=1).dropna()
        n = int(len(both))
        if n < 3:
            return Evidence(n, "–", applicable=n > 0, reason="fewer than 3 images")
        if both.x.nunique() < 2 or both.y.nunique() < 2:
            return Evidence(n, "a variable is constant", applicable=False,
                            reason="a variable is constant over the images: no correlation to test")
        rho = float(sps.spearmanr(both.x, both.y).statistic)
        alt_for, alt_against = ("less", "greater") if self.negative else ("greater", "less")
        p_for = spearman_p(both.x, both.y, alt_for)
        p_against = spearman_p(both.x, both.y, alt_against)
        lo, hi = spearman_interval(rho, n, alpha)  # Fisher z with Bonett & Wright's (2000) variance
        ci = f" [{fmt(lo, 2, sign=True)}, {fmt(hi, 2, sign=True)}]" if n > 3 else ""
        r = min(max(rho, -0.9999), 0.9999)
        needed = math.inf if rho == 0 else float(math.ceil(
            (1 + r * r / 2) * ((z_score(1 - alpha) + z_score(power)) / math.atanh(abs(r))) ** 2 + 3))
        direction = int(np.sign(rho)) * (-1 if self.negative else 1)
        est = f"ρ({self.names[0]}, {self.names[1]}) = {fmt(rho, 2, sign=True)}{ci}"
        return Evidence(n, est, p_for, p_against, needed, direction=direction, p_min=smallest_p("spearman", n),
                        p_min_against=smallest_p("spearman", n))

    def rule(self, alpha):
        side = "negative" if self.negative else "positive"
        return (f"held when a one-sided test of Spearman's ρ finds it {side} (Holm-adjusted p < {alpha}; exact "
                f"permutation test up to {EXACT_SPEARMAN_N} images, Student's t above); not held when it finds the "
                f"opposite sign; interval: Fisher z with Bonett-Wright variance")


# ----------------------------------------------------------------------------- deterministic


@dataclass
class Invariant(Claim):
    """A property every item must have by construction: checked on all of them, no statistics.

    ``violations`` out of ``n`` items; held when none violates it, not held otherwise.
    """

    violations: int = 0
    n: int = 0
    what: str = "maps"
    basis: str = "a guarantee of the algorithm, not a statistical claim; no test"

    def evaluate(self, alpha, power):
        n, v = int(self.n), int(self.violations)
        if n == 0:
            return Evidence(0, "–")
        return Evidence(n, f"{v} of {n} {items(self.what, n)} violate{'s' if n == 1 else ''} it",
                        decided=HELD if v == 0 else NOT_HELD)

    def rule(self, alpha):
        return f"checked on every one of the {self.what}: held when none violates it, not held otherwise ({self.basis})"


# ----------------------------------------------------------------------------- compound


@dataclass
class AllOf(Claim):
    """A claim made of parts: held when every part holds, not held when any part is not held.

    Each part is a test in the family (and in Holm's correction).
    """

    of: list = field(default_factory=list)

    def parts(self):
        return [q for c in self.of for q in c.parts()]

    def evaluate(self, alpha, power):  # the family decides the parts; this only summarises
        return Evidence(0, "")

    def rule(self, alpha):
        return f"held when each of its {len(self.parts())} parts holds, not held when any part is not held"


# ----------------------------------------------------------------------------- counted items (issue 22: "1 searches")


def items(what: str, n: int) -> str:
    """``what`` (a plural noun phrase, e.g. "searches", "maps with a defined APEM") for ``n`` items: singular when 1."""
    if n != 1:
        return what
    head, _, rest = what.partition(" ")
    if head.endswith(("ches", "shes", "sses", "xes")):
        head = head[:-2]
    elif head.endswith("s") and not head.endswith("ss"):
        head = head[:-1]
    return f"{head} {rest}" if rest else head
