"""The verdicts, formatting, the unit (one value per image), a claim's evidence and the base class."""

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
        return _no_negative_zero(f"{100 * x:.{digits}f}") + "%"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):+d}" if sign else f"{int(x):,}"
    return _no_negative_zero(f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}")


def _no_negative_zero(text: str) -> str:
    """``"-0"``, ``"-0.00"`` (a small negative number rounded away) and ``"+0.00"`` print as ``"0"``, ``"0.00"``."""
    return text[1:] if text[:1] in "+-" and not text.strip("+-0.") else text


def fmt_p(p: float) -> str:
    """A p-value as the verdict tables print it: three decimals, ``< 0.001``, ``–`` for none."""
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_n(n) -> str:
    """A number of images as the tables print it: ``1,234``, ``∞`` (a null effect), ``> 10⁶``, ``–`` for none."""
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


class Missing:
    """The values of a method (or group) the configuration lacks.

    A claim given one is *not applicable*, with the reason "the configuration lacks
    ...": the one rule for claims a configuration cannot test (see :class:`Claim`).
    """

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"Missing({self.what!r})"


class PerGroup(dict):
    """One value per image for each group (method, stage, ...) of a table: ``{group: Series}``.

    Indexing a group the table lacks gives :class:`Missing` instead of a ``KeyError``,
    so a chapter can declare its claims on every method the thesis names and a
    configuration without one of them marks just those claims not applicable.
    """

    def __missing__(self, key):
        from apem.thesis import label

        return Missing(label(key) if isinstance(key, str) else str(key))


def per_group(df: pd.DataFrame, value: str, by: str = "method", unit: str = "image_id",
              how: str = "mean") -> PerGroup:
    """:func:`per_image` of ``value`` for each level of ``by``: ``{level: Series indexed by image}``.

    ``per_group(C, "apem")["gradient"]`` is the Gradient's APEM per image; a level the
    table lacks gives :class:`Missing` (the claim that uses it is not applicable).
    """
    return PerGroup({k: per_image(g, value, unit, how) for k, g in df.groupby(by, sort=False)})


def censored_of(df: pd.DataFrame, value: str, by: str = "method", unit: str = "image_id") -> PerGroup:
    """Whether each image's ``value`` is censored, for each level of ``by``: ``{level: bool Series by image}``.

    An image is censored when any of its rows is (:func:`apem.stats.censored`: a search that reached its
    bound, on the side that bounds ``value``). Give it to a claim as ``censored=`` so the verdict table
    shows whether the verdict survives leaving those images out (see :class:`Claim`).
    """
    from apem.stats import censored

    flags = df.assign(_censored=censored(df, value).to_numpy())
    return PerGroup({k: g.groupby(unit, sort=False)["_censored"].any() for k, g in flags.groupby(by, sort=False)})


def as_series(v, name: str) -> pd.Series:
    """``v`` as a float Series, one value per image (a Series with a repeated index is refused, naming ``name``)."""
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
    p_min: float = np.nan  # the smallest p for the claim its test can reach at this n (before Holm; NaN: never held)
    p_min_against: float = np.nan  # the same against the claim (its refutation)
    undecidable: bool = False  # no data of this size could decide it (set by the family; not applicable)


@dataclass
class Claim:
    """Base class: ``text`` (what is claimed), ``source`` (``"thesis"`` or ``"ours"``).

    ``applicable=False`` with a ``reason`` declares the claim untestable on these data
    (decided by the chapter from a stated condition, never from the outcome). A claim
    whose data include a :class:`Missing` (a method or group the configuration lacks,
    see :func:`per_group`) is not applicable for that reason: the one guard for
    configurations that lack a method.

    ``censored``: which images' values are censored (a bool Series by image, or a list of
    them, OR-ed; :func:`censored_of`). How they enter is declared once for every claim:
    *at the bound*, i.e. as the restricted value ``min(epsilon, bound)`` (a censored epsilon
    is at least the bound, so its rank among uncensored values is right, and a paired
    difference of two censored values is a tie). The family also decides the claim with
    those images *left out* and shows whether the verdict survives.

    ``ref``: the thesis statement(s) the claim tests, keys of :data:`apem.thesis.STATEMENTS` (a key or a
    tuple of keys). The verdict table records them in its output's metadata, and the book's coverage page
    (:mod:`apem.book.coverage`) reads them from the executed chapters.
    """

    text: str
    source: str = THESIS
    applicable: bool = True
    reason: str = ""
    censored: object = None
    ref: object = ()

    # filled by Claims.decide
    evidence: Evidence | None = field(default=None, init=False, repr=False)
    verdict: str | None = field(default=None, init=False)
    p_for_adj: float = field(default=np.nan, init=False, repr=False)
    p_against_adj: float = field(default=np.nan, init=False, repr=False)
    p_best: float = field(default=np.nan, init=False, repr=False)  # the smallest Holm-adjusted p it could reach
    verdict_without_censored: str | None = field(default=None, init=False)  # the sensitivity check's verdict
    cannot_hold: bool = field(default=False, init=False, repr=False)  # its held side is out of reach at this n

    def evaluate(self, alpha: float, power: float) -> Evidence:  # pragma: no cover - abstract
        """The claim's :class:`Evidence` on its data: ``n``, estimate, interval, p for and against, images needed."""
        raise NotImplementedError

    def rule(self, alpha: float) -> str:  # pragma: no cover - abstract
        """The claim's decision rule in words (the verdict table's "Rules, declared before the data")."""
        raise NotImplementedError

    def refs(self) -> tuple:
        """The thesis statements this claim tests (keys of :data:`apem.thesis.STATEMENTS`), as a tuple."""
        return (self.ref,) if isinstance(self.ref, str) else tuple(self.ref or ())

    def parts(self) -> list["Claim"]:
        """The claims Holm counts: the claim itself, or a compound's parts (:class:`~apem.claims.AllOf`)."""
        return [self]

    def censored_images(self) -> set:
        """The images :attr:`censored` flags (empty when none is given)."""
        flags = self.censored if isinstance(self.censored, (list, tuple)) else [self.censored]
        out = set()
        for f in flags:
            if isinstance(f, pd.Series):
                out |= set(f.index[f.astype(bool).to_numpy()])
        return out

    def without(self, images: set) -> "Claim":
        """A copy whose per-image data (every Series field) leave ``images`` out: the sensitivity check."""
        import copy

        c = copy.copy(self)
        for k, v in vars(self).items():
            if k != "censored" and isinstance(v, pd.Series):
                setattr(c, k, v[~v.index.isin(list(images))])
        c.censored = None
        return c

    def _evaluate(self, alpha: float, power: float) -> Evidence:
        if not self.applicable:
            return Evidence(0, "–", applicable=False, reason=self.reason or "not testable on these data")
        flags = self.censored if isinstance(self.censored, (list, tuple)) else [self.censored]
        lacking = [v.what for v in [*vars(self).values(), *flags] if isinstance(v, Missing)]
        if lacking:
            return Evidence(0, "–", applicable=False,
                            reason=f"the configuration lacks {', '.join(dict.fromkeys(lacking))}")
        ev = self.evaluate(alpha, power)
        if ev.applicable and ev.n == 0 and ev.decided is None:
            ev.applicable, ev.reason = False, "no images to test it on"
        return ev


def z_score(q: float) -> float:
    """The standard normal quantile at ``q`` (``scipy.stats.norm.ppf``)."""
    return float(sps.norm.ppf(q))
