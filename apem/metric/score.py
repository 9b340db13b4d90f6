r"""The scores: :math:`\mathrm{APEM}` and :math:`\mathrm{APEM}_{norm}`, per item and over a set of items.

Per item (one map of one image): :math:`\epsilon^+ - \epsilon^-` and
:math:`\epsilon^+/\epsilon\text{-shuffle}^+ - \epsilon^-/\epsilon\text{-shuffle}^-`
(:func:`apem_terms`, :func:`apem_norm_terms`, NaN where a side is undefined);
over a set, their means (:func:`apem`, :func:`apem_norm`; thesis 5.2), over
the defined items only (:func:`defined_rows`; :func:`table_summary` per group
of a results table). Every other module (the runner's table, the filter, the
studies, the command line's summary) computes APEM through these.
"""

from __future__ import annotations

import numpy as np


def _array(v) -> np.ndarray:
    return np.asarray(v.cpu() if hasattr(v, "cpu") else v, dtype=np.float64)


def apem_terms(eps_plus, eps_minus, undefined=None) -> np.ndarray:
    r"""Per item :math:`\epsilon^+ - \epsilon^-` as float64, NaN where ``undefined`` (censored items keep their bound)."""
    a = _array(eps_plus) - _array(eps_minus)
    return a if undefined is None else np.where(np.asarray(undefined, dtype=bool), np.nan, a)


#: Why an APEM_norm term is undefined (:func:`apem_norm_terms` with ``return_reason=True``); "" when it is defined.
NORM_REASONS = {
    "map": "the map's own epsilon is undefined",
    "shuffle_plus": "shuffled eps-plus undefined (0 or NaN): no shuffled irrelevance direction to divide by",
    "shuffle_minus": "shuffled eps-minus undefined (0 or NaN): no shuffled relevance direction to divide by",
}


def _undefined_eps(v: np.ndarray) -> np.ndarray:
    """Epsilons that are not a step (``eps < 1``: 0 marks an undefined map) or not a number."""
    return ~(v >= 1)


def apem_norm_terms(eps_plus, eps_minus, eps_shuffle_plus, eps_shuffle_minus, undefined=None, *,
                    return_reason: bool = False):
    r"""Per item :math:`\epsilon^+/\epsilon\text{-shuffle}^+ - \epsilon^-/\epsilon\text{-shuffle}^-` as float64.

    NaN where ``undefined`` and wherever a shuffled epsilon is undefined (0, what
    the search returns when no shuffled direction exists, or NaN): such a term is
    never divided by zero, never inf. ``return_reason``: also an object array of
    reasons (:data:`NORM_REASONS`; "" for a defined term).
    """
    ep, em = _array(eps_plus), _array(eps_minus)
    sp, sm = _array(eps_shuffle_plus), _array(eps_shuffle_minus)
    bad_p, bad_m = _undefined_eps(sp), _undefined_eps(sm)
    und = np.zeros(ep.shape, dtype=bool) if undefined is None else np.asarray(undefined, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = ep / np.where(bad_p, 1.0, sp) - em / np.where(bad_m, 1.0, sm)
    a = np.where(und | bad_p | bad_m, np.nan, a)
    if not return_reason:
        return a
    reason = np.full(a.shape, "", dtype=object)
    reason[bad_m] = NORM_REASONS["shuffle_minus"]
    reason[bad_p] = NORM_REASONS["shuffle_plus"]
    reason[und] = NORM_REASONS["map"]
    return a, reason


def _kept(values, mask, what="undefined epsilons (0 or NaN) in the set: pass mask=~(undefined_minus | undefined_plus)"):
    keep = np.ones(len(values[0]), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if any(_undefined_eps(v[keep]).any() for v in values):
        raise ValueError(what)
    return keep


def apem(eps_plus, eps_minus, *, mask=None) -> float:
    r""":math:`\mathrm{APEM} = \frac1n\sum_i (\epsilon^+_i - \epsilon^-_i)` over the items in ``mask``.

    Undefined items (``eps = 0``) must be masked out; censored items count
    with their bound value.
    """
    keep = _kept([_array(eps_plus), _array(eps_minus)], mask)
    return float(apem_terms(eps_plus, eps_minus)[keep].mean()) if keep.any() else float("nan")


def apem_norm(eps_plus, eps_minus, eps_shuffle_plus, eps_shuffle_minus, *, mask=None) -> float:
    r""":math:`\mathrm{APEM}_{norm} = \frac1n\sum_i \left(\epsilon^+_i/\epsilon\text{-shuffle}^+_i
    - \epsilon^-_i/\epsilon\text{-shuffle}^-_i\right)` (thesis 5.2)."""
    keep = _kept([_array(v) for v in (eps_plus, eps_minus)], mask)
    keep = _kept([_array(v) for v in (eps_shuffle_plus, eps_shuffle_minus)], keep,
                 "undefined shuffled epsilons (0 or NaN) in the set: leave those items out of the mask "
                 "(apem_norm_terms gives them NaN and a reason)")
    terms = apem_norm_terms(eps_plus, eps_minus, eps_shuffle_plus, eps_shuffle_minus)
    return float(terms[keep].mean()) if keep.any() else float("nan")


def defined_rows(table) -> np.ndarray:
    """The rows of a results table whose APEM is defined: ``~(undefined_minus | undefined_plus)``.

    The mask :func:`apem` and :func:`apem_norm` expect; every mean over a table's
    epsilons or APEM goes through it, so no undefined row (``eps = 0``) enters a mean.
    """
    return ~(np.asarray(table["undefined_minus"], dtype=bool) | np.asarray(table["undefined_plus"], dtype=bool))


def table_summary(table, by=("method", "stage")):
    """Mean and median APEM per group of a results table (thesis Tables 4.2 and 4.4), over its defined rows.

    Columns: ``n`` (defined rows), ``mean`` (:func:`apem` with ``mask=``
    :func:`defined_rows`), ``median``, ``mean_eps_minus`` and ``mean_eps_plus``
    (over the same rows), ``censored`` (defined rows with either side censored),
    ``undefined`` (rows left out); with the shuffled baseline also ``n_norm`` and
    ``mean_norm`` (:func:`apem_norm` over the rows whose shuffled epsilons are
    defined too).
    """
    import pandas as pd

    by = [by] if isinstance(by, str) else list(by)
    shuffled = "eps_shuffle_minus" in table and "eps_shuffle_plus" in table
    rows = []
    for key, g in table.groupby(by, sort=False):
        ok = defined_rows(g)
        ep, em = _array(g.eps_plus), _array(g.eps_minus)
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update(
            n=int(ok.sum()),
            mean=apem(ep, em, mask=ok),
            median=float(np.median(apem_terms(ep, em)[ok])) if ok.any() else float("nan"),
            mean_eps_minus=float(em[ok].mean()) if ok.any() else float("nan"),
            mean_eps_plus=float(ep[ok].mean()) if ok.any() else float("nan"),
            censored=int(((np.asarray(g.censored_minus, dtype=bool) | np.asarray(g.censored_plus, dtype=bool)) & ok).sum()),
            undefined=int((~ok).sum()),
        )
        if shuffled:
            sp, sm = _array(g.eps_shuffle_plus), _array(g.eps_shuffle_minus)
            ok_n = ok & ~_undefined_eps(sp) & ~_undefined_eps(sm)
            row.update(n_norm=int(ok_n.sum()), mean_norm=apem_norm(ep, em, sp, sm, mask=ok_n))
        rows.append(row)
    return pd.DataFrame(rows).set_index(by)
