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
    """The thesis's coarse-to-fine loop, one tested sigma per group per pass."""
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
    while not bool(done.all()):
        ga = (~done).nonzero().squeeze(1)
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
    """Scan ``block`` consecutive steps per group per pass; the first changed step wins."""
    dev = active.device
    nxt = torch.ones(G, dtype=torch.long, device=dev)
    eps = torch.full((G,), bound, dtype=torch.long, device=dev)
    done = ~active.clone()
    nfw = torch.zeros(G, dtype=torch.long, device=dev)
    ks = torch.arange(block, device=dev)
    slots = torch.arange(S, device=dev)
    passes = 0
    while not bool(done.all()):
        ga = (~done).nonzero().squeeze(1)
        steps = nxt[ga][:, None] + ks  # (A, K)
        valid = steps < bound
        # request order (group, step, shuffle) -- what per-step shuffles draw in
        mem = (ga[:, None, None] * S + slots).expand(-1, block, -1)
        st = steps[:, :, None].expand(-1, -1, S)
        vmask = valid[:, :, None].expand(-1, -1, S)
        pred, _ = fwd(mem[vmask], st[vmask])
        flips = torch.zeros(vmask.shape, dtype=torch.bool, device=dev)
        flips[vmask] = pred != target_of[mem[vmask]]
        anyf = flips.any(2)  # (A, K)
        nfw.index_add_(0, ga, vmask.flatten(1).sum(1))
        hit = anyf.any(1)
        first = torch.where(hit, anyf.float().argmax(1), torch.zeros_like(ga))
        eps[ga] = torch.where(hit, nxt[ga] + first, eps[ga])
        nxt[ga] = nxt[ga] + block
        done[ga] = hit | (nxt[ga] >= bound)
        passes += 1
        if on_pass:
            on_pass(done)
    censored = active & (eps >= bound)
    eps = torch.where(active, eps, torch.zeros_like(eps))
    return eps, censored, nfw, passes


#: The engine of every search mode, by name (the order is :data:`apem.metric.SEARCH_MODES`).
ENGINES = {"thesis": thesis_engine, "linear": linear_engine, "bisect": bisect_engine}
