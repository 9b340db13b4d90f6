r"""The scores: :math:`\mathrm{APEM}` and :math:`\mathrm{APEM}_{norm}`, per item and over a set of items.

Per item (one map of one image): :math:`\epsilon^+ - \epsilon^-` and
:math:`\epsilon^+/\epsilon\text{-shuffle}^+ - \epsilon^-/\epsilon\text{-shuffle}^-`
(:func:`apem_terms`, :func:`apem_norm_terms`, NaN where a side is undefined);
over a set, their means (:func:`apem`, :func:`apem_norm`; thesis 5.2). Every
other module (the runner's table, the filter, the studies) computes APEM
through these.
"""

from __future__ import annotations

import numpy as np


def _array(v) -> np.ndarray:
    return np.asarray(v.cpu() if hasattr(v, "cpu") else v, dtype=np.float64)


def apem_terms(eps_plus, eps_minus, undefined=None) -> np.ndarray:
    r"""Per item :math:`\epsilon^+ - \epsilon^-` as float64, NaN where ``undefined`` (censored items keep their bound)."""
    a = _array(eps_plus) - _array(eps_minus)
    return a if undefined is None else np.where(np.asarray(undefined, dtype=bool), np.nan, a)


def apem_norm_terms(eps_plus, eps_minus, eps_shuffle_plus, eps_shuffle_minus, undefined=None) -> np.ndarray:
    r"""Per item :math:`\epsilon^+/\epsilon\text{-shuffle}^+ - \epsilon^-/\epsilon\text{-shuffle}^-`, NaN where ``undefined``."""
    a = _array(eps_plus) / _array(eps_shuffle_plus) - _array(eps_minus) / _array(eps_shuffle_minus)
    return a if undefined is None else np.where(np.asarray(undefined, dtype=bool), np.nan, a)


def _kept(values, mask):
    keep = np.ones(len(values[0]), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if any((v[keep] < 1).any() for v in values):
        raise ValueError("undefined epsilons (0) in the set: pass mask=~(undefined_minus | undefined_plus)")
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
    keep = _kept([_array(v) for v in (eps_plus, eps_minus, eps_shuffle_plus, eps_shuffle_minus)], mask)
    terms = apem_norm_terms(eps_plus, eps_minus, eps_shuffle_plus, eps_shuffle_minus)
    return float(terms[keep].mean()) if keep.any() else float("nan")
