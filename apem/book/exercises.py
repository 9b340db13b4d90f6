"""The end-of-chapter exercises: gluing the numbers their solutions quote, and the helpers that compute them.

Every chapter ends with exercises (sphinx-exercise directives, format in the chapters'
"Exercises" sections); a solution that quotes a number takes it from a build through
MyST-NB's glue: a hidden cell computes ``apem.chapters.chNN.exercise_values`` (name -> text,
names ``exNN_...``) on the reference build -- the configuration without overrides, the
chapter's default parameters -- and on this page's parameters, and :func:`glue` glues the
first under their names and the second as ``<name>_here`` (``{glue:text}`exNN_name``` in
the solution). A solution therefore quotes the same reference numbers after a student
re-runs the chapter with a changed parameter, and can set the re-run's beside them.

A value that the configuration cannot give (e.g. stage 1 when ``stages`` lacks it) is a
sentence that says so, never a number typed in.
"""

from __future__ import annotations

import copy
import math

import pandas as pd

from apem import claims as cl
from apem import stats, thesis
from apem.book import display

# ----------------------------------------------------------------------------- helpers (tested)


def order_by_mean(table: pd.DataFrame, seed: int = 0) -> str:
    """The methods of ``table`` (one stage) from the highest mean APEM to the lowest: ``"Gradient > LRP-ε > ..."``."""
    S = stats.summary_table(table, by="method", seed=seed)
    R = stats.ranking(S)
    return " > ".join(thesis.label(m) for m in R.index)


def means_sentence(table: pd.DataFrame, seed: int = 0) -> str:
    """``"Gradient 128.8, SmoothGrad ≥ 1515.8, ..."``: mean APEM per method as censoring leaves it (a bound marked)."""
    S = stats.summary_table(table, by="method", seed=seed)
    return ", ".join(f"{thesis.label(m)} {display.fmt_mean(float(r['mean']), r.get('mean_bound', 'exact'), 0)}"
                     for m, r in S.iterrows())


def counts_sentence(counts: dict) -> str:
    """``{"held": 1, ...}`` -> ``"1 held, 0 not held, 4 inconclusive, 2 not applicable"``."""
    return ", ".join(f"{int(counts.get(v, 0))} {v}" for v in cl.VERDICTS)


def all_success_n(threshold: float, alpha: float) -> int:
    """The fewest images at which k = n of n can show a share above ``threshold`` (one-sided exact binomial).

    With every image a success the exact p-value is ``threshold ** n``; it falls below ``alpha``
    from ``n = ceil(log(alpha) / log(threshold))`` on (before any multiplicity correction).
    """
    n = math.ceil(math.log(alpha) / math.log(threshold))
    return n + 1 if threshold ** n >= alpha else n


def smallest_mann_whitney_p(n1: int, n2: int) -> float:
    """The smallest one-sided p-value an exact Mann-Whitney test can give with groups of n1 and n2 (no ties):
    :func:`apem.claims.kinds.smallest_p`, NaN when a group is empty."""
    from apem.claims.kinds import smallest_p

    return smallest_p("mann-whitney", n1, n2) if n1 and n2 else float("nan")


def glue(reference: dict[str, str], here: dict[str, str] | None = None) -> None:
    """Glue the numbers the solutions quote (nothing is displayed).

    ``reference``: the chapter's ``exercise_values`` on the reference build (the
    configuration without overrides, the chapter's default parameters), glued under
    their names, so a solution reads the same after a student re-runs the chapter
    with a changed parameter. ``here``: the same values on this page's parameters,
    glued as ``<name>_here`` for solutions that compare the re-run with the reference.
    """
    from myst_nb import glue as nb_glue

    for name, value in reference.items():
        nb_glue(name, value, display=False)
    for name, value in (here or {}).items():
        nb_glue(f"{name}_here", value, display=False)


def decided_at(chapter_claims: list, alpha: float) -> cl.Claims:
    """The family of ``chapter_claims`` (a page's claim list) decided at ``alpha``, on copies (the page's own stay as
    they are): ``.m`` is Holm's family size, ``.counts()`` the verdict counts (see :func:`counts_sentence`)."""
    return cl.Claims(copy.deepcopy(chapter_claims), alpha=alpha)
