"""Claims: each verdict in the book comes from a rule declared before the data are seen.

A chapter builds a :class:`Claims` family from claim objects -- :class:`Proportion`,
:class:`Paired`, :class:`Location`, :class:`TwoGroups`, :class:`Correlation`,
:class:`Vanishes` and :class:`ZeroMedian` (the thesis's "is zero" claims: never held, not held when a
two-sided test finds the value nonzero), :class:`Invariant` (checked on every
item, no test), :class:`AllOf` (a compound) and :class:`Descriptive` (shown, never
tested, always "not applicable" with its reason). Each claim
declares its statistic, its test (or exact interval), its threshold, its
direction and its unit (the image: a claim receives one value per image; maps
of one image are averaged into that value by :func:`per_image` before any test,
so they are never counted as independent). The family then

* evaluates every claim: ``n`` (images), the estimate with an exact or
  distribution-free interval where one exists, two one-sided p-values (for the
  claim, and for its opposite);
* leaves out, as *undecidable*, the claims whose test could not reach ``alpha`` at their
  number of images whatever the data (decided from the sizes alone);
* adjusts the p-values with Holm's method across the family's tests, the p-values for
  and against every claim in one family (so the chance of any wrong verdict stays below
  ``alpha``), and decides at ``alpha``:

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

The package: :mod:`apem.claims.base` (verdicts, formatting, the per-image unit,
:class:`Evidence`, :class:`Claim`), :mod:`apem.claims.kinds` (the claim kinds), :mod:`apem.claims.zero` (the "is zero" claims and the
descriptive ones) and
:mod:`apem.claims.family` (:class:`Claims`, Holm, the page's table and discussion).
"""

from apem.claims.base import (
    ALPHA, BADGE, HELD, INCONCLUSIVE, MAX_N, NOT_APPLICABLE, NOT_HELD, OURS, POWER, THESIS, VERDICTS, Claim,
    Evidence, Missing, PerGroup, censored_of, fmt, fmt_n, fmt_p, per_group, per_image,
)
from apem.claims.family import Claims, holm
from apem.claims.kinds import AllOf, Correlation, Invariant, Location, Paired, Proportion, TwoGroups
from apem.claims.zero import Descriptive, NoneNonzero, SameShape, Vanishes, ZeroMedian

__all__ = [
    "ALPHA", "BADGE", "HELD", "INCONCLUSIVE", "MAX_N", "NOT_APPLICABLE", "NOT_HELD", "OURS", "POWER", "THESIS",
    "VERDICTS", "AllOf", "Claim", "Claims", "Correlation", "Descriptive", "Evidence", "Invariant", "Location",
    "NoneNonzero", "Paired", "Proportion", "SameShape", "TwoGroups", "Vanishes", "ZeroMedian", "fmt", "fmt_n", "fmt_p", "holm", "per_image",
    "Missing", "PerGroup", "censored_of", "per_group",
]
