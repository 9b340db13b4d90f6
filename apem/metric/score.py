r"""The scores: :math:`\mathrm{APEM}` and :math:`\mathrm{APEM}_{norm}` over a set of items."""

from __future__ import annotations

import torch


def apem(eps_plus, eps_minus, *, mask=None) -> float:
    r""":math:`\mathrm{APEM} = \frac1n\sum_i (\epsilon^+_i - \epsilon^-_i)` over the items in ``mask``.

    Undefined items (``eps = 0``) must be masked out; censored items count
    with their bound value.
    """
    ep = torch.as_tensor(eps_plus).double().cpu()
    em = torch.as_tensor(eps_minus).double().cpu()
    keep = torch.ones_like(ep, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().cpu()
    if bool(((ep[keep] < 1) | (em[keep] < 1)).any()):
        raise ValueError("undefined epsilons (0) in the set: pass mask=~(undefined_minus | undefined_plus)")
    return float((ep - em)[keep].mean()) if bool(keep.any()) else float("nan")


def apem_norm(eps_plus, eps_minus, eps_shuffle_plus, eps_shuffle_minus, *, mask=None) -> float:
    r""":math:`\mathrm{APEM}_{norm} = \frac1n\sum_i \left(\epsilon^+_i/\epsilon\text{-shuffle}^+_i
    - \epsilon^-_i/\epsilon\text{-shuffle}^-_i\right)` (thesis 5.2)."""
    t = [torch.as_tensor(v).double().cpu() for v in (eps_plus, eps_minus, eps_shuffle_plus, eps_shuffle_minus)]
    keep = torch.ones_like(t[0], dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().cpu()
    if bool(torch.stack([(v[keep] < 1).any() for v in t]).any()):
        raise ValueError("undefined epsilons (0) in the set: mask them out")
    ep, em, sp, sm = (v[keep] for v in t)
    return float((ep / sp - em / sm).mean()) if bool(keep.any()) else float("nan")
