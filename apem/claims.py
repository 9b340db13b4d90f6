"""Claims: each verdict in the book comes from a rule declared before the data are seen.

A chapter builds a :class:`Claims` family from claim objects -- :class:`Proportion`,
:class:`Paired`, :class:`Location`, :class:`TwoGroups`, :class:`Correlation`,
:class:`Vanishes` (an "is zero" claim, never held), :class:`Invariant` (checked on every
item, no test), :class:`AllOf` (a compound) and :class:`Descriptive` (shown, never
tested, always "not applicable" with its reason). Each claim
declares its statistic, its test (or exact interval), its threshold, its
direction and its unit (the image: a claim receives one value per image; maps
of one image are averaged into that value by :func:`per_image` before any test,
so they are never counted as independent). The family then

* evaluates every claim: ``n`` (images), the estimate with an exact or
  distribution-free interval where one exists, two one-sided p-values (for the
  claim, and for its opposite);
* adjusts the p-values with Holm's method across the family's tests (for and
  against separately), and decides at ``alpha``:

  - ``held``: the adjusted p-value *for* the claim is below ``alpha``;
  - ``not held``: the adjusted p-value *against* it is below ``alpha``;
  - ``inconclusive``: neither;
  - ``not applicable``: the data cannot test the claim (no images, or a
    condition the chapter states, e.g. randomised maps that are constant);
    a vacuous pass is never ``held``;

* prints, from the same objects, a table (claim, n, estimate, p, images
  needed, verdict), the rule of every claim in words, and a discussion
  generated from the verdicts.

"Images needed" is the smallest number of images at which the claim's test
reaches ``power`` (80%) at ``alpha`` (one-sided, before Holm) if the true
effect equals the observed one: exact binomial power for proportions and the
sign test; Noether's (1987) formulas for the signed-rank and rank-sum tests;
Bonett & Wright's (2000) for a Spearman correlation. It is ``∞`` when the
observed effect is null, and it is computed in the direction the data point
to (the images needed to show the claim, or to refute it).

Why not a bootstrap: a percentile bootstrap of a proportion at 0/n or n/n is
the degenerate interval [0, 0] or [1, 1]; the exact (Clopper-Pearson)
interval for 0/37 is [0%, 9.5%]. Every interval here is exact or
distribution-free: Clopper-Pearson for proportions, the order-statistic
interval for a median (:func:`scipy.stats.quantile_test`), Fisher's z with
Bonett-Wright's variance for Spearman's rho.

References: Clopper & Pearson (1934), Biometrika 26; Holm (1979), Scand. J.
Statist. 6; Noether (1987), JASA 82, "Sample size determination for some
common nonparametric tests"; Bonett & Wright (2000), Psychometrika 65,
"Sample size requirements for estimating Pearson, Kendall and Spearman
correlations"; Wilcoxon (1945); Mann & Whitney (1947).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

HELD, NOT_HELD, INCONCLUSIVE, NOT_APPLICABLE = "held", "not held", "inconclusive", "not applicable"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE, NOT_APPLICABLE)
BADGE = {HELD: "✅ held", NOT_HELD: "❌ not held", INCONCLUSIVE: "➖ inconclusive", NOT_APPLICABLE: "⚪ not applicable"}
ALPHA = 0.05
POWER = 0.8
MAX_N = 1_000_000  # "images needed" beyond this prints as "> 10⁶"

THESIS, OURS = "thesis", "ours"


# ----------------------------------------------------------------------------- formatting


def fmt(x, digits: int = 2, pct: bool = False, sign: bool = False) -> str:
    """A number for prose and tables: ``–`` for NaN/None (``nan`` never reaches a page)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "∞" if isinstance(x, float) and x == math.inf else "–"
    if pct:
        return f"{100 * x:.{digits}f}%"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):+d}" if sign else f"{int(x):,}"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_n(n) -> str:
    if n is None:
        return "–"
    if n == math.inf:
        return "∞"
    return "> 10⁶" if n > MAX_N else f"{int(n):,}"


# ----------------------------------------------------------------------------- the unit


def per_image(df: pd.DataFrame, value: str, unit: str = "image_id", how: str = "mean") -> pd.Series:
    """One value per image: the maps (rows) of an image aggregated together (default: their mean).

    A claim's test treats images as independent and nothing else; several maps of
    one image are one observation.
    """
    if unit not in df:
        raise ValueError(f"the table has no {unit!r} column: a claim's unit is the image")
    return df.groupby(unit, sort=False)[value].agg(how)


def _series(v, name: str) -> pd.Series:
    if isinstance(v, pd.Series):
        if v.index.has_duplicates:
            raise ValueError(f"{name}: one value per image is required (aggregate with apem.claims.per_image)")
        return v.astype(float)
    return pd.Series(np.asarray(v, dtype=float).ravel())


# ----------------------------------------------------------------------------- evidence


@dataclass
class Evidence:
    """What evaluating a claim gave: the family turns the p-values into a verdict."""

    n: int
    estimate: str
    p_for: float = np.nan
    p_against: float = np.nan
    needed: float | None = None  # images needed (see the module docstring); inf when the effect is null
    applicable: bool = True
    reason: str = ""
    decided: str | None = None  # a deterministic verdict (Invariant), no test
    direction: int = 0  # +1 the data point the claimed way, -1 the other way, 0 null


@dataclass
class Claim:
    """Base class: ``text`` (what is claimed), ``source`` (``"thesis"`` or ``"ours"``).

    ``applicable=False`` with a ``reason`` declares the claim untestable on these data
    (decided by the chapter from a stated condition, never from the outcome).
    """

    text: str
    source: str = THESIS
    applicable: bool = True
    reason: str = ""

    # filled by Claims.decide
    evidence: Evidence | None = field(default=None, init=False, repr=False)
    verdict: str | None = field(default=None, init=False)
    p_for_adj: float = field(default=np.nan, init=False, repr=False)
    p_against_adj: float = field(default=np.nan, init=False, repr=False)

    def evaluate(self, alpha: float, power: float) -> Evidence:  # pragma: no cover - abstract
        raise NotImplementedError

    def rule(self, alpha: float) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def parts(self) -> list["Claim"]:
        return [self]

    def _evaluate(self, alpha: float, power: float) -> Evidence:
        if not self.applicable:
            return Evidence(0, "–", applicable=False, reason=self.reason or "not testable on these data")
        ev = self.evaluate(alpha, power)
        if ev.applicable and ev.n == 0 and ev.decided is None:
            ev.applicable, ev.reason = False, "no images to test it on"
        return ev


def _z(q: float) -> float:
    return float(sps.norm.ppf(q))


# ----------------------------------------------------------------------------- proportions


def _binom_needed(p_hat: float, p0: float, alpha: float, power: float) -> float:
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
        v = _series(self.outcomes, self.text).dropna()
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
            needed = _binom_needed(share, self.threshold, alpha, power) if direction > 0 else \
                _binom_needed(1 - share, 1 - self.threshold, alpha, power)
        else:
            needed = _binom_needed(1 - share, 1 - self.threshold, alpha, power) if direction > 0 else \
                _binom_needed(share, self.threshold, alpha, power)
        est = f"{k}/{n} {self.what} = {fmt(share, 1, pct=True)} [{fmt(ci.low, 1, pct=True)}, {fmt(ci.high, 1, pct=True)}]"
        return Evidence(n, est, p_for, p_against, needed, direction=direction)

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
    n = (_z(1 - alpha) + _z(power)) ** 2 / (3 * (p - 0.5) ** 2)
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
        a, b = _series(self.a, self.text), _series(self.b, self.text)
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
        est = (f"median {na} {fmt(float(both.a.median()), self.digits)} vs {nb} {fmt(float(both.b.median()), self.digits)}; "
               f"claimed side on {wins}, tie on {ties}, other side on {losses} of {n} images")
        if wins + losses == 0:
            return Evidence(n, est, 1.0, 1.0, math.inf, direction=0)
        if self.test == "sign":
            p_for = sps.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue
            p_against = sps.binomtest(wins, wins + losses, 0.5, alternative="less").pvalue
            share = max(wins, losses) / (wins + losses)
            needed = _binom_needed(share, 0.5, alpha, power)
            needed = math.inf if wins == losses else float(math.ceil(needed / ((wins + losses) / n)))
        else:
            alt_for = "greater" if self.greater else "less"
            alt_against = "less" if self.greater else "greater"
            p_for = float(sps.wilcoxon(d, zero_method="wilcox", alternative=alt_for).pvalue)
            p_against = float(sps.wilcoxon(d, zero_method="wilcox", alternative=alt_against).pvalue)
            needed = _noether_signed_rank(d, alpha, power)
        direction = int(np.sign(wins - losses)) if self.test == "sign" else int(np.sign(p_against - p_for))
        return Evidence(n, est, p_for, p_against, needed, direction=direction)

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
        v = _series(self.values, self.text).dropna().to_numpy(float)
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
            return Evidence(n, est, 1.0, 1.0, math.inf, direction=0)
        alt_for, alt_against = ("greater", "less") if self.greater else ("less", "greater")
        p_for = float(sps.wilcoxon(d, zero_method="wilcox", alternative=alt_for).pvalue)
        p_against = float(sps.wilcoxon(d, zero_method="wilcox", alternative=alt_against).pvalue)
        return Evidence(n, est, p_for, p_against, _noether_signed_rank(d, alpha, power),
                        direction=int(np.sign(p_against - p_for)))

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
        a = _series(self.a, self.text).dropna().to_numpy(float)
        b = _series(self.b, self.text).dropna().to_numpy(float)
        n = int(a.size + b.size)
        if a.size == 0 or b.size == 0:
            return Evidence(0, "–")
        alt_for, alt_against = ("greater", "less") if self.greater else ("less", "greater")
        u = sps.mannwhitneyu(a, b, alternative=alt_for)
        p_for = float(u.pvalue)
        p_against = float(sps.mannwhitneyu(a, b, alternative=alt_against).pvalue)
        ps = float(sps.mannwhitneyu(a, b).statistic) / (a.size * b.size)  # P(a > b) + P(a = b)/2
        na, nb = self.names
        est = (f"median {na} {fmt(float(np.median(a)), self.digits)} ({a.size} images) vs {nb} "
               f"{fmt(float(np.median(b)), self.digits)} ({b.size} images); P({na} > {nb}) = {fmt(ps, 2)}")
        if ps == 0.5:
            needed = math.inf
        else:  # Noether (1987): N = (z_a + z_b)^2 / (12 c (1 - c) (p - 1/2)^2)
            c = a.size / n
            needed = float(math.ceil((_z(1 - alpha) + _z(power)) ** 2 / (12 * c * (1 - c) * (ps - 0.5) ** 2)))
        direction = int(np.sign(ps - 0.5)) * (1 if self.greater else -1)
        return Evidence(n, est, p_for, p_against, needed, direction=direction)

    def rule(self, alpha):
        rel = "greater" if self.greater else "smaller"
        na, nb = self.names
        return (f"held when a one-sided Mann-Whitney U test finds {na} {rel} than {nb} (Holm-adjusted p < {alpha}); "
                "not held when it finds the opposite")


# ----------------------------------------------------------------------------- correlation


@dataclass
class Correlation(Claim):
    """"Spearman's rho between ``x`` and ``y`` (one pair per image) is positive (``negative=True``: negative)"."""

    x: object = None
    y: object = None
    negative: bool = False
    names: tuple = ("x", "y")

    def evaluate(self, alpha, power):
        x, y = _series(self.x, self.text), _series(self.y, self.text)
        both = pd.concat([x.rename("x"), y.rename("y")], axis=1).dropna()
        n = int(len(both))
        if n < 3:
            return Evidence(n, "–", applicable=n > 0, reason="fewer than 3 images")
        if both.x.nunique() < 2 or both.y.nunique() < 2:
            return Evidence(n, "a variable is constant", applicable=False,
                            reason="a variable is constant over the images: no correlation to test")
        rho = float(sps.spearmanr(both.x, both.y).statistic)
        alt_for, alt_against = ("less", "greater") if self.negative else ("greater", "less")
        p_for = float(sps.spearmanr(both.x, both.y, alternative=alt_for).pvalue)
        p_against = float(sps.spearmanr(both.x, both.y, alternative=alt_against).pvalue)
        # Fisher z with Bonett & Wright's (2000) variance for Spearman: (1 + rho^2 / 2) / (n - 3)
        r = min(max(rho, -0.9999), 0.9999)
        if n > 3:
            se = math.sqrt((1 + r * r / 2) / (n - 3))
            z = math.atanh(r)
            lo, hi = math.tanh(z - _z(1 - alpha / 2) * se), math.tanh(z + _z(1 - alpha / 2) * se)
            ci = f" [{fmt(lo, 2, sign=True)}, {fmt(hi, 2, sign=True)}]"
        else:
            ci = ""
        needed = math.inf if rho == 0 else float(math.ceil(
            (1 + r * r / 2) * ((_z(1 - alpha) + _z(power)) / math.atanh(abs(r))) ** 2 + 3))
        direction = int(np.sign(rho)) * (-1 if self.negative else 1)
        est = f"ρ({self.names[0]}, {self.names[1]}) = {fmt(rho, 2, sign=True)}{ci}"
        return Evidence(n, est, p_for, p_against, needed, direction=direction)

    def rule(self, alpha):
        side = "negative" if self.negative else "positive"
        return (f"held when a one-sided test of Spearman's ρ finds it {side} (Holm-adjusted p < {alpha}); not held when "
                f"it finds the opposite sign; interval: Fisher z with Bonett-Wright variance")


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
        return Evidence(n, f"{v} of {n} {self.what} violate it", decided=HELD if v == 0 else NOT_HELD)

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
        x, y = _series(self.x, self.text), _series(self.y, self.text)
        both = pd.concat([x.rename("x"), y.rename("y")], axis=1).dropna()
        res = sps.spearmanr(both.x, both.y)
        rho, p = float(res.statistic), float(res.pvalue)
        r = min(abs(rho), 0.9999)
        q = float(sps.norm.ppf(1 - alpha / 2)) + float(sps.norm.ppf(power))
        needed = math.inf if rho == 0 else float(math.ceil((1 + r * r / 2) * (q / math.atanh(r)) ** 2 + 3))
        return Evidence(ev.n, ev.estimate, p_for=np.nan, p_against=p, needed=needed,
                           direction=-1 if rho != 0 else 0)

    def rule(self, alpha):
        return (f"never held (no test shows a correlation to be zero without a declared margin); not held when a "
                f"two-sided test of Spearman's ρ finds it nonzero (Holm-adjusted p < {alpha}); inconclusive otherwise")


@dataclass
class NoneNonzero(AllOf):
    """Every part is a :class:`Vanishes`: never held, not held when any part is, inconclusive otherwise."""

    def rule(self, alpha):
        return (f"never held; not held when any of its {len(self.parts())} parts is not held (a correlation found "
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


# ----------------------------------------------------------------------------- the family


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaNs stay NaN and do not count."""
    from apem.stats import holm as _holm

    return _holm(p)


class Claims:
    """A chapter's family of claims, decided together (Holm) and shown by the object that decides.

    ``Claims(title, [claim, ...], alpha=0.05, power=0.8)``; ``display(claims)`` or
    leaving it as a cell's last expression shows the table, the rules and the
    discussion; :meth:`frame` gives the verdicts as a table (for tests).
    """

    def __init__(self, claims: list[Claim], title: str = "Did the claims hold on our model?",
                 alpha: float = ALPHA, power: float = POWER, context: str = ""):
        if not 0 < alpha < 1 or not 0 < power < 1:
            raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
        self.claims, self.title, self.alpha, self.power, self.context = list(claims), title, alpha, power, context
        self._decide()

    # ------------------------------------------------------------------ deciding
    def _decide(self) -> None:
        tests = []
        for c in self.claims:
            for part in c.parts():
                if isinstance(c, AllOf) and not c.applicable:
                    part.applicable, part.reason = False, c.reason
                part.evidence = part._evaluate(self.alpha, self.power)
                ev = part.evidence
                if ev.applicable and ev.decided is None:
                    tests.append(part)
        self.m = len(tests)
        pf = holm([t.evidence.p_for for t in tests])
        pa = holm([t.evidence.p_against for t in tests])
        for t, a, b in zip(tests, pf, pa):
            t.p_for_adj, t.p_against_adj = float(a), float(b)
        for c in self.claims:
            for part in c.parts():
                part.verdict = self._verdict(part)
            if isinstance(c, AllOf):
                vs = [p.verdict for p in c.parts()]
                c.evidence = Evidence(min((p.evidence.n for p in c.parts()), default=0),
                                      "; ".join(f"{p.text}: {p.evidence.estimate}" for p in c.parts()),
                                      needed=_max_needed([p for p in c.parts()]),
                                      applicable=c.applicable and bool(vs), reason=c.reason)
                if not c.applicable or not vs or all(v == NOT_APPLICABLE for v in vs):
                    c.verdict = NOT_APPLICABLE
                elif NOT_HELD in vs:
                    c.verdict = NOT_HELD
                elif all(v == HELD for v in vs):
                    c.verdict = HELD
                else:
                    c.verdict = INCONCLUSIVE

    def _verdict(self, c: Claim) -> str:
        ev = c.evidence
        if not ev.applicable:
            return NOT_APPLICABLE
        if ev.decided is not None:
            return ev.decided
        if c.p_for_adj < self.alpha:
            return HELD
        if c.p_against_adj < self.alpha:
            return NOT_HELD
        return INCONCLUSIVE

    # ------------------------------------------------------------------ reading
    def __iter__(self):
        return iter(self.claims)

    def __len__(self):
        return len(self.claims)

    def verdict(self, text_start: str) -> str:
        """The verdict of the first claim whose text starts with ``text_start``."""
        for c in self.claims:
            if c.text.startswith(text_start):
                return c.verdict
        raise KeyError(text_start)

    def frame(self) -> pd.DataFrame:
        rows = []
        for c in self.claims:
            ev = c.evidence
            p = c.p_for_adj if np.isfinite(c.p_for_adj) else np.nan
            rows.append({"claim": c.text, "source": c.source, "n": ev.n, "estimate": ev.estimate,
                         "p_holm": p, "p_against_holm": c.p_against_adj, "needed": ev.needed,
                         "verdict": c.verdict, "rule": c.rule(self.alpha), "reason": ev.reason})
        return pd.DataFrame(rows)

    def counts(self) -> dict:
        return {v: sum(c.verdict == v for c in self.claims) for v in VERDICTS}

    # ------------------------------------------------------------------ showing
    def markdown(self) -> str:
        lines = [f"**{self.title}**", "",
                 "| # | claim | source | n | evidence | p (Holm) | images needed | n decides? | verdict |",
                 "| --- | --- | --- | ---: | --- | ---: | ---: | --- | --- |"]
        for i, c in enumerate(self.claims, 1):
            ev = c.evidence
            ptxt = _p_cell(c)
            evidence = ev.estimate if ev.applicable else f"not testable: {ev.reason}"
            lines.append(f"| {i} | {c.text} | {'thesis' if c.source == THESIS else 'ours'} | {_count(c)} | {evidence} | "
                         f"{ptxt} | {fmt_n(ev.needed) if ev.applicable else '–'} | {_decides(c)} | "
                         f"{BADGE[c.verdict]} |")
        lines += ["", f"*Rules, declared before the data (α = {self.alpha}; Holm's correction over the "
                  f"{self.m} test{'s' if self.m != 1 else ''} of this chapter; the unit is the image):*", ""]
        for i, c in enumerate(self.claims, 1):
            lines.append(f"{i}. {c.rule(self.alpha)}.")
            if isinstance(c, AllOf):
                for p in c.parts():
                    lines.append(f"   - {p.text}: {p.rule(self.alpha)} ({BADGE[p.verdict]}).")
        lines += ["", f"*Images needed*: the number of images at which the test would reach {self.power:.0%} power "
                  f"at α = {self.alpha} (one-sided, before Holm) if the true effect were the one observed, in the "
                  "direction observed; ∞ when no effect was observed. *n decides?*: whether the images at hand "
                  "reach that number (an invariant is checked on every item, so it always decides)."]
        return "\n".join(lines)

    def power_summary(self, source: str | None = THESIS) -> dict:
        """How many testable claims (of ``source``; None: all) this n has the power to decide."""
        cs = [c for c in self.claims if (source is None or c.source == source) and c.evidence.applicable]
        enough = [c for c in cs if _has_power(c)]
        short = [c.evidence.needed for c in cs if not _has_power(c)]
        finite = [n for n in short if n is not None and n != math.inf]
        return {"claims": len(cs), "enough": len(enough), "short": len(short),
                "max_needed": max(finite) if finite else None}

    def discussion(self, n_images: int | None = None, censored: str = "", model: str = "") -> str:
        """A short discussion generated from the verdicts: what held, what did not, and why that may be."""
        k = self.counts()
        out = [f"**Discussion.** Of {len(self.claims)} claims, {k[HELD]} held, {k[NOT_HELD]} did not, "
               f"{k[INCONCLUSIVE]} {'was' if k[INCONCLUSIVE] == 1 else 'were'} inconclusive"
               + (f" and {k[NOT_APPLICABLE]} could not be tested" if k[NOT_APPLICABLE] else "") + "."]
        for c in self.claims:
            ev = c.evidence
            if c.verdict == HELD:
                out.append(f"*{c.text}* held on {_count(c)} ({ev.estimate}).")
            elif c.verdict == NOT_HELD:
                why = " The thesis measured VGG-16 on 5,000 images; a different model can order things differently." \
                    if c.source == THESIS else ""
                out.append(f"*{c.text}* did not hold: the data point the other way ({ev.estimate}).{why}")
            elif c.verdict == INCONCLUSIVE:
                need = ev.needed
                if (need is None or need == math.inf) and isinstance(c, AllOf):
                    why = "at least one of its parts showed no effect in either direction"
                elif need is None or need == math.inf:
                    why = "no effect in either direction was observed"
                elif need > ev.n:
                    why = (f"at the observed effect about {fmt_n(need)} images would be needed for "
                           f"{self.power:.0%} power, and there were {ev.n}")
                else:
                    why = (f"the observed effect would usually be detectable with {ev.n} images, so this is chance "
                           f"or Holm's correction over {self.m} tests")
                out.append(f"*{c.text}* was inconclusive: {why}.")
            else:
                out.append(f"*{c.text}* could not be tested: {ev.reason}.")
        ps = self.power_summary(THESIS)
        if ps["claims"]:
            out.append(f"Power: at these sizes the observed effects of {ps['enough']} of the {ps['claims']} testable "
                       f"thesis claims can be decided" + (
                           f"; {ps['short']} would need more images"
                           + (f" (up to {fmt_n(ps['max_needed'])} where an effect was seen)"
                              if ps["max_needed"] is not None else "")
                           if ps["short"] else "") + ".")
        if censored:
            out.append(censored)
        if model:
            out.append(model)
        if self.context:
            out.append(self.context)
        return " ".join(out)

    def _repr_markdown_(self) -> str:
        return self.markdown() + "\n\n" + self.discussion()

    def show(self, **discussion) -> None:
        """Display the verdict table, the rules and the discussion (keyword arguments go to :meth:`discussion`)."""
        from IPython.display import Markdown, display

        display(Markdown(self.markdown() + "\n\n" + self.discussion(**discussion)))


def _has_power(c: Claim) -> bool:
    """The images at hand reach the images needed (an invariant needs no power: it is checked, not tested)."""
    ev = c.evidence
    if isinstance(c, Invariant):
        return True
    return ev.needed is not None and ev.needed != math.inf and ev.needed <= ev.n


def _decides(c: Claim) -> str:
    if not c.evidence.applicable:
        return "–"
    if _has_power(c):
        return "yes"
    need = c.evidence.needed
    return "no effect seen" if need is None or need == math.inf else f"no: needs {fmt_n(need)}"


def _count(c: Claim) -> str:
    """``n`` with its unit: images, or the items an :class:`Invariant` is checked on."""
    n = c.evidence.n
    return f"{n} {c.what}" if isinstance(c, Invariant) else f"{n} image{'s' if n != 1 else ''}"


def _max_needed(parts) -> float | None:
    vals = [p.evidence.needed for p in parts if p.evidence.applicable and p.evidence.needed is not None]
    return max(vals) if vals else None


def _p_cell(c: Claim) -> str:
    if isinstance(c, AllOf):
        ps = [p.p_for_adj for p in c.parts() if np.isfinite(p.p_for_adj)]
        return f"max {fmt_p(max(ps))}" if ps else "–"
    if c.verdict == NOT_HELD:
        return f"{fmt_p(c.p_for_adj)} (against: {fmt_p(c.p_against_adj)})"
    return fmt_p(c.p_for_adj)
