"""The step-search engines: the thesis's coarse-to-fine loop and the linear scan.

Every engine works on G groups of S members (member m = g * S + s); a group
changes at a step as soon as one of its members does. Plain searches have S = 1.
An engine is called as ``engine(fwd, target_of, S, G, bound, active, *,
block, info, img_of_member, d, hint, on_pass)`` (``fwd`` a
:class:`~apem.metric.forward.Forward`, ``target_of`` each member's target,
``active`` which groups have a direction); it takes the keywords it needs and
returns ``(eps, censored, n_forward, passes)`` per group. :data:`ENGINES` maps
each search mode to its engine: a new mode is one more entry.
"""

from __future__ import annotations

import torch

from apem.metric.bisect import bisect_engine
from apem.metric.forward import group_any

THESIS_PACES = (1000, 100, 10, 1)


def thesis_engine(fwd, target_of, S, G, bound, active, *, paces=THESIS_PACES, on_pass=None, **_):
    """The thesis's coarse-to-fine loop, one tested sigma per group per pass (one host synchronisation per pass)."""
    dev = active.device
    pace = torch.tensor(paces, dtype=torch.long, device=dev)
    k = torch.zeros(G, dtype=torch.long, device=dev)
    sigma = torch.zeros(G, dtype=torch.long, device=dev)
    start = torch.zeros(G, dtype=torch.long, device=dev)
    done = ~active.clone()
    censored = torch.zeros(G, dtype=torch.bool, device=dev)
    nfw = torch.zeros(G, dtype=torch.long, device=dev)
    slots = torch.arange(S, device=dev)
    passes = 0
    while True:
        ga = (~done).nonzero().squeeze(1)  # the pass's one host synchronisation: its size ends the loop
        if len(ga) == 0:
            break
        mem = (ga[:, None] * S + slots).reshape(-1)
        grp = mem // S
        pred, _ = fwd(mem, sigma[grp])
        flip = group_any(pred != target_of[mem], grp, G)
        nfw.index_add_(0, grp, torch.ones_like(grp))
        act = ~done
        unchanged = act & ~flip
        start = torch.where(unchanged, sigma, start)
        sigma = torch.where(unchanged, sigma + pace[k], sigma)
        exhausted = unchanged & (sigma >= bound)
        advance = (act & flip) | exhausted
        last = advance & (k == len(paces) - 1)
        done |= last
        censored |= last & exhausted
        nxt = advance & ~last
        k = torch.where(nxt, k + 1, k)
        sigma = torch.where(nxt, start, sigma)
        passes += 1
        if on_pass:
            on_pass(done)
    eps = torch.where(active, start + 1, torch.zeros_like(start))
    return eps, censored & active, nfw, passes


def linear_engine(fwd, target_of, S, G, bound, active, *, block=32, on_pass=None, **_):
    """Scan ``block`` consecutive steps per group per pass; the first changed step wins.

    One host synchronisation per pass: the ``nonzero`` that lists the pass's
    (group, step, shuffle) requests, in that order (what per-step shuffles draw
    in); everything else is computed for all G groups with ``torch.where``.
    """
    dev = active.device
    nxt = torch.ones(G, dtype=torch.long, device=dev)
    eps = torch.full((G,), bound, dtype=torch.long, device=dev)
    done = ~active.clone()
    nfw = torch.zeros(G, dtype=torch.long, device=dev)
    ks = torch.arange(block, device=dev)
    passes = 0
    while True:
        act = ~done
        # a group still searching has nxt < bound, so it has a valid step and the list is empty only when all are done
        want = (act[:, None] & (nxt[:, None] + ks < bound))[:, :, None].expand(-1, -1, S)  # (G, K, S)
        req = want.nonzero()  # (F, 3) rows (group, k, shuffle) in lexicographic order
        if len(req) == 0:
            break
        g, k = req[:, 0], req[:, 1]
        mem = g * S + req[:, 2]
        pred, _ = fwd(mem, nxt[g] + k)
        anyf = group_any(pred != target_of[mem], g * block + k, G * block).view(G, block)  # (G, K)
        nfw.index_add_(0, g, torch.ones_like(g))
        hit = anyf.any(1)  # False for groups without requests
        first = anyf.float().argmax(1)
        eps = torch.where(hit, nxt + first, eps)
        nxt = torch.where(act, nxt + block, nxt)
        done = done | (act & (hit | (nxt >= bound)))
        passes += 1
        if on_pass:
            on_pass(done)
    censored = active & (eps >= bound)
    eps = torch.where(active, eps, torch.zeros_like(eps))
    return eps, censored, nfw, passes


#: The engine of every search mode, by name (the order is :data:`apem.metric.SEARCH_MODES`).
ENGINES = {"thesis": thesis_engine, "linear": linear_engine, "bisect": bisect_engine}
