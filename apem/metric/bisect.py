r"""``bisect``: a bracketed integer root search steered by a log model of the margin.

See the package docstring (:mod:`apem.metric`, "Search modes") for the method.
The root-finding pieces, each usable (and tested) on its own:

- :func:`log_model_root`: root of the one-parameter log model
  :math:`m_0 + s_0\tau\log(1 + \epsilon/\tau)`;
- :func:`fit_tau`: the :math:`\tau` that puts that model through one tested point;
- :func:`two_point_log_root`: root of the two-parameter model
  :math:`m_0 - A\tau\log(1+\epsilon/\tau)` through two tested points;
- :func:`secant_root`: zero of the line through two tested points;
- :func:`solve_log_tau`: the scalar solver behind the fits (bisection on :math:`\log\tau`);
- :class:`Brackets`: every member's verified bracket and its best points;
- :func:`root_estimate` -> :func:`candidates` -> forward pass -> :func:`update_brackets`:
  one lockstep round of :func:`bracket_search`;
- :func:`bisect_engine`: the engine registered as ``"bisect"`` in
  :data:`apem.metric.engines.ENGINES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apem.metric.forward import group_any


@dataclass
class BisectTuning:
    """Knobs of the ``bisect`` candidate choice (they change the cost, never the answer's validity).

    ``tau_prior``: the first probe aims at the root of the log model with
    ``tau = tau_prior * m(0) / -m'(0)``; ``aim``: unbracketed probes aim this
    fraction above the estimated root (to bracket it); ``creep``/``growth``: after ``creep``
    unchanged probes without an upper end, each new step is at least
    ``growth`` times the previous one; ``conf_abs``/``conf_rel``: when a tested
    point lies within ``max(conf_abs, conf_rel * r)`` of the estimate ``r``,
    the two integers around ``r`` are tested in the same pass.
    """

    tau_prior: float = 1.0
    aim: float = 0.0
    creep: int = 3
    growth: float = 2.0
    conf_abs: float = 1.0
    conf_rel: float = 0.0
    conf_sqrt: float = 0.3
    fit2_best: bool = True
    guard: int = 4
    creep_pairs: int = 2


BISECT = BisectTuning()
#: halvings of log(tau) in [-20, 30]: 50 / 2**40 ~ 5e-11, far below what moves an integer candidate
LOG_TAU_ITERS = 40


def log_model_root(m0, s0, tau):
    r"""Root of :math:`m_0 + s_0 \tau \log(1 + \epsilon/\tau)`: :math:`\tau\,(e^{m_0 / (-s_0 \tau)} - 1)`."""
    z = (m0 / (-s0 * tau)).clamp(max=40.0)
    return tau * torch.expm1(z)


def solve_log_tau(lhs_of_tau, target, iters=LOG_TAU_ITERS):
    """Solve the decreasing-in-tau equation ``lhs(tau) = target`` by bisection on log tau in [e^-20, e^30]."""
    lo = torch.full_like(target, -20.0)
    hi = torch.full_like(target, 30.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        small = lhs_of_tau(torch.exp(mid)) > target  # lhs decreases with tau: root lies above mid
        lo = torch.where(small, mid, lo)
        hi = torch.where(small, hi, mid)
    return torch.exp((lo + hi) / 2)


def fit_tau(m0, s0, e, m):
    r"""Solve :math:`m_0 + s_0 \tau \log(1 + e/\tau) = m` for :math:`\tau` (NaN when impossible).

    :math:`\tau \log(1 + e/\tau)` grows from 0 to :math:`e` with :math:`\tau`,
    so a solution exists iff the drop :math:`m_0 - m` is in :math:`(0, -s_0 e)`.
    """
    ef = e.to(m0.dtype)
    target = (m0 - m) / (-s0)
    ok = (s0 < 0) & (m0 - m > 0) & (target < ef) & (ef > 0)
    tau = solve_log_tau(lambda t: -(t * torch.log1p(ef / t)), -target)
    return torch.where(ok, tau, torch.full_like(tau, float("nan")))


def two_point_log_root(m0, e1, m1, e2, m2):
    r"""Root of :math:`m_0 - A \tau \log(1 + \epsilon/\tau)` through :math:`(e_1, m_1), (e_2, m_2)`, NaN if none.

    The ratio :math:`\log(1+e_1/\tau)/\log(1+e_2/\tau)` (:math:`e_1 < e_2`)
    falls from 1 to :math:`e_1/e_2` as :math:`\tau` grows; the observed drop
    ratio :math:`(m_0 - m_1)/(m_0 - m_2)` must lie in between.
    """
    f1, f2 = e1.to(m0.dtype), e2.to(m0.dtype)
    d1, d2 = m0 - m1, m0 - m2
    ratio = d1 / d2
    ok = (d1 > 0) & (d2 > 0) & (f1 > 0) & (f1 < f2) & (ratio < 1) & (ratio > f1 / f2)
    tau = solve_log_tau(lambda t: torch.log1p(f1 / t) / torch.log1p(f2 / t), ratio)
    A = d2 / (tau * torch.log1p(f2 / tau))
    root = tau * torch.expm1((m0 / (A * tau)).clamp(max=40.0))
    return torch.where(ok, root, torch.full_like(root, float("nan")))


def secant_root(e1, m1, e2, m2):
    """Zero of the line through ``(e1, m1)`` and ``(e2, m2)`` (NaN when undefined)."""
    f1, f2 = e1.to(m1.dtype), e2.to(m1.dtype)
    den = m2 - m1
    ok = (e1 >= 0) & (e2 >= 0) & (den != 0) & torch.isfinite(den)
    r = f1 - m1 * (f2 - f1) / torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok, r, torch.full_like(r, float("nan")))


class Brackets:
    """Per-member bracket and history of the bisect search (all tensors (N,))."""

    def __init__(self, N, bound, m0, s0, flip0, dev):
        f64 = torch.float64
        self.lo = torch.zeros(N, dtype=torch.long, device=dev)
        self.mlo = m0.to(f64).clone()
        self.hi = torch.full((N,), bound, dtype=torch.long, device=dev)
        self.mhi = torch.full((N,), float("nan"), dtype=f64, device=dev)
        self.hik = torch.zeros(N, dtype=torch.bool, device=dev)
        # the two tested points (step > 0) with the smallest |margin|; step -1 = none
        self.be = torch.full((N, 2), -1, dtype=torch.long, device=dev)
        self.bm = torch.full((N, 2), float("nan"), dtype=f64, device=dev)
        self.under = torch.zeros(N, dtype=torch.long, device=dev)  # unbracketed passes after the first
        self.step = torch.zeros(N, dtype=torch.long, device=dev)  # last unbracketed step
        self.slow = torch.zeros(N, dtype=torch.long, device=dev)  # bracketed passes in a row that did not halve it
        self.need_one = flip0.clone()
        self.low_pairs = torch.zeros(N, dtype=torch.long, device=dev)  # passes in a row tested below the root
        self.m0, self.s0 = m0.to(f64), s0.to(f64)


def root_estimate(st: Brackets, mi, U, hint, bound, tune: BisectTuning):
    """Real-valued root estimate for members ``mi`` (see the module docstring)."""
    f64 = torch.float64
    lo, mlo, hi, mhi, hik = st.lo[mi], st.mlo[mi], st.hi[mi], st.mhi[mi], st.hik[mi]
    m0, s0 = st.m0[mi], st.s0[mi]
    lof = lo.to(f64)
    nan = torch.full_like(m0, float("nan"))
    be, bm = st.be[mi], st.bm[mi]
    rs = secant_root(be[:, 0], bm[:, 0], be[:, 1], bm[:, 1])
    if tune.fit2_best:
        swap = be[:, 0] > be[:, 1]
        e1, e2 = torch.where(swap, be[:, 1], be[:, 0]), torch.where(swap, be[:, 0], be[:, 1])
        g1, g2 = torch.where(swap, bm[:, 1], bm[:, 0]), torch.where(swap, bm[:, 0], bm[:, 1])
        rf = two_point_log_root(m0, e1, g1, e2, g2)
        rs = torch.where(torch.isfinite(rf), rf, rs)
    # -- no verified upper end: extrapolate
    r0 = torch.where(s0 < 0, m0 / (-s0), nan)
    first = log_model_root(m0, s0, tune.tau_prior * r0)
    first = torch.where(torch.isfinite(first) & (first > 0), first, torch.full_like(first, 16.0))
    if hint is not None:
        first = torch.where(hint > 0, hint.to(f64) - 0.5, first)
    tau = fit_tau(m0, s0, lo, mlo)
    refit = log_model_root(m0, s0, tau)
    lin = lof + mlo * lof / (m0 - mlo)
    refit = torch.where(torch.isfinite(refit), refit, lin)
    refit = torch.where(torch.isfinite(rs) & (rs > lof), torch.maximum(torch.nan_to_num(refit, nan=-1.0), rs), refit)
    refit = torch.where(torch.isfinite(refit) & (refit > lof), refit, 2 * lof + 8)
    grow = st.under[mi] >= tune.creep
    refit = torch.where(grow, torch.maximum(refit, lof + tune.growth * st.step[mi].to(f64)), refit)
    r_un = torch.where(lo == 0, first, refit) * (1 + tune.aim)
    # -- bracketed: secant of the two best points, else the two-parameter log model, else regula falsi
    Uf = U.to(f64)
    inside = lambda r: torch.isfinite(r) & (r > lof) & (r < Uf)  # noqa: E731
    r_b = torch.where(inside(rs), rs, nan)
    f2 = torch.where(lo > 0, two_point_log_root(m0, lo, mlo, hi, mhi), log_model_root(m0, s0, fit_tau(m0, s0, hi, mhi)))
    r_b = torch.where(~inside(r_b) & inside(f2), f2, r_b)
    falsi = lof + (hi.to(f64) - lof) * mlo / (mlo - mhi)
    r_b = torch.where(~inside(r_b) & inside(falsi), falsi, r_b)
    r_b = torch.where(inside(r_b), r_b, (lof + Uf) / 2)
    return torch.where(hik, r_b, r_un).clamp(max=float(bound))


def candidates(st: Brackets, mi, U, hint, bound, tune: BisectTuning):
    """Up to two integer candidates in ``(lo, U)`` per member ``mi`` (``c2 = 0``: none)."""
    lo, hik = st.lo[mi], st.hik[mi]
    r = root_estimate(st, mi, U, hint, bound, tune)
    # distance from the estimate to the nearest tested point
    pts = torch.cat([torch.stack([torch.where(lo > 0, lo, -1), torch.where(hik, st.hi[mi], -1)], 1), st.be[mi]], 1)
    dist = torch.where(pts > 0, (r[:, None] - pts.to(r.dtype)).abs(), torch.full_like(r[:, None], float("inf")))
    conf = dist.amin(1) <= torch.clamp(torch.maximum(tune.conf_rel * r, tune.conf_sqrt * r.clamp_min(0).sqrt()),
                                       min=tune.conf_abs)
    if hint is not None:
        conf = conf | ((lo == 0) & (hint > 0))
    # Brent-style guard: a bracket that has not halved for `guard` passes in a row is bisected
    bisect = hik & (st.slow[mi] >= tune.guard)
    r = torch.where(bisect, (lo + U).to(r.dtype) / 2, r)
    conf = conf & ~bisect
    # Creeping: when `creep_pairs` confident pairs in a row both fell short of the root (a margin
    # that flattens out just above zero makes every estimate land a few steps too low), step up
    # from lo by the estimated distance times 2, 4, 8, ... instead, never past the midpoint.
    if tune.creep_pairs > 0:
        lp = st.low_pairs[mi]
        creeping = hik & ~bisect & (lp >= tune.creep_pairs)
        jump = (r - lo.to(r.dtype)).clamp_min(1.0) * torch.pow(2.0, (lp - tune.creep_pairs + 1).clamp(max=30).to(r.dtype))
        r = torch.where(creeping, torch.minimum(lo.to(r.dtype) + jump, (lo + U).to(r.dtype) / 2), r)
        conf = conf & ~creeping
    k = torch.floor(r).long()
    k1_ok = (k > lo) & (k < U)
    k2_ok = (k + 1 > lo) & (k + 1 < U)
    single = torch.where(hik, torch.round(r), torch.ceil(r)).long()
    single = torch.minimum(torch.maximum(single, lo + 1), U - 1)
    use_pair = conf & (k1_ok | k2_ok)
    c1 = torch.where(use_pair, torch.where(k1_ok, k, k + 1), single)
    c2 = torch.where(use_pair & k1_ok & k2_ok, k + 1, torch.zeros_like(k))
    width = U - lo - 1
    small = width <= 2
    c1 = torch.where(small, lo + 1, c1)
    c2 = torch.where(small, torch.where(width == 2, lo + 2, torch.zeros_like(lo)), c2)
    need = st.need_one[mi]
    c1 = torch.where(need, torch.ones_like(c1), c1)
    c2 = torch.where(need, torch.zeros_like(c2), c2)
    return c1, c2, ~hik & ~small & ~need & (lo > 0)


def tested(mi, c1, c2, pairs=None):
    """The pass's requests ``(mem, cand)``: every member of ``mi`` at ``c1``, then those with ``c2 > 0`` at ``c2``.

    ``pairs``: the positions ``(c2 > 0).nonzero()`` when the caller has them (one host synchronisation).
    """
    if pairs is None:
        pairs = (c2 > 0).nonzero().squeeze(1)
    return torch.cat([mi, mi[pairs]]), torch.cat([c1, c2[pairs]])


def _put(n, index, keep, values, fill):
    """A length-``n`` tensor of ``fill`` with ``values[keep]`` written at ``index[keep]`` (distinct positions).

    The rows not kept go to a spare slot ``n`` that is dropped: no boolean-mask indexing (a host synchronisation
    on an accelerator) and the same numbers as ``out[index[keep]] = values[keep]``.
    """
    out = torch.full((n + 1,), fill, dtype=values.dtype, device=values.device)
    out[torch.where(keep, index, torch.full_like(index, n))] = values
    return out[:n]


def update_brackets(st: Brackets, mi, U, c1, c2, flip, marg, unbracketed_pass, *, requests=None):
    """Shrink the brackets with the tested candidates (pairs ``(c1, c2)`` of members ``mi``, limits ``U``).

    ``requests``: the ``(mem, cand)`` of :func:`tested`, when the caller has them (the order ``flip`` and
    ``marg`` follow). Apart from computing them when not given, no step here synchronises with the host.
    """
    N = len(st.lo)
    dev = st.lo.device
    f64 = torch.float64
    two = c2 > 0
    n1 = len(mi)
    mem, cand = tested(mi, c1, c2) if requests is None else requests
    big = torch.iinfo(torch.long).max
    hi_or_big = torch.where(st.hik, st.hi, torch.full_like(st.hi, big))
    fmin = torch.full((N,), big, dtype=torch.long, device=dev)
    fmin.scatter_reduce_(0, mem, torch.where(flip, cand, torch.full_like(cand, big)), "amin")
    top = torch.minimum(fmin, hi_or_big)
    below = ~flip & (cand < top[mem])
    umax = torch.full((N,), -1, dtype=torch.long, device=dev)
    umax.scatter_reduce_(0, mem, torch.where(below, cand, torch.full_like(cand, -1)), "amax")
    new_hi = fmin < hi_or_big
    new_lo = umax > st.lo
    # a member's candidates differ (c2 > c1), so at most one row per member is selected
    m_hi = _put(N, mem, flip & (cand == fmin[mem]), marg.to(f64), float("nan"))
    m_lo = _put(N, mem, below & (cand == umax[mem]), marg.to(f64), float("nan"))
    # unbracketed bookkeeping (before hik changes)
    st.under[mi] += unbracketed_pass.long()
    step_new = torch.maximum(c1, c2) - st.lo[mi]
    st.step[mi] = torch.where(~st.hik[mi], step_new, st.step[mi])
    old_w = U - st.lo[mi]
    was_bracketed = st.hik[mi]
    st.lo = torch.where(new_lo, umax, st.lo)
    st.mlo = torch.where(new_lo, m_lo, st.mlo)
    st.hi = torch.where(new_hi, fmin, st.hi)
    st.mhi = torch.where(new_hi, m_hi, st.mhi)
    st.hik = st.hik | new_hi
    halved = 2 * (torch.minimum(st.hi[mi], U) - st.lo[mi]) <= old_w
    st.slow[mi] = torch.where(was_bracketed & ~halved, st.slow[mi] + 1, torch.zeros_like(st.slow[mi]))
    st.need_one.index_fill_(0, mi, False)
    # confident pairs (and the jumps after them) that all fell short of the root, in a row
    anyflip = group_any(flip, mem, N)
    short = ~anyflip[mi] & (two | (st.low_pairs[mi] > 0))
    st.low_pairs[mi] = torch.where(short, st.low_pairs[mi] + 1, torch.zeros_like(st.low_pairs[mi]))
    # keep the two points with the smallest |margin|
    E = torch.cat([st.be, torch.full((N, 2), -1, dtype=torch.long, device=dev)], 1)
    Mg = torch.cat([st.bm, torch.full((N, 2), float("nan"), dtype=f64, device=dev)], 1)
    slot = torch.cat([torch.full((n1,), 2, device=dev), torch.full((len(cand) - n1,), 3, device=dev)])
    E[mem, slot] = cand
    Mg[mem, slot] = marg
    key = torch.where((E > 0) & torch.isfinite(Mg), Mg.abs(), torch.full_like(Mg, float("inf")))
    # ties: the most recent point first (slots 2, 3 before 0, 1): sort the columns (2, 3, 0, 1), map j -> (j + 2) % 4
    order = torch.argsort(torch.cat([key[:, 2:], key[:, :2]], 1), dim=1, stable=True)[:, :2]
    order = (order + 2) % 4
    st.be = E.gather(1, order)
    st.bm = Mg.gather(1, order)
    st.be = torch.where(torch.isfinite(st.bm), st.be, torch.full_like(st.be, -1))


def bisect_engine(fwd, target_of, S, G, bound, active, *, info, img_of_member, d, hint=None, on_pass=None,
                  tune=None, **_):
    """The ``bisect`` engine: :func:`bracket_search` started from the clean margin and its slope along ``d``.

    ``info`` (:class:`~apem.metric.margin.MarginInfo`) gives each member's
    image its clean margin, whether the clean input is already changed, and
    the slope source; ``img_of_member`` maps members to images, ``d`` holds
    the members' directions.
    """
    m0 = info.margin[img_of_member]
    flip0 = info.changed[img_of_member]
    s0 = info.slope(d, img_of_member)
    return bracket_search(fwd, target_of, S, G, bound, active, m0, s0, flip0, hint=hint, on_pass=on_pass, tune=tune)


def bracket_search(fwd, target_of, S, G, bound, active, m0, s0, flip0, hint=None, on_pass=None, tune=None):
    """Bracketed integer root search, groups of ``S`` members in lockstep (see the module docstring).

    Invariants per member: the prediction is unchanged at ``lo`` (or ``lo = 0``,
    the clean input) and changed at ``hi`` when ``hik``; candidates lie strictly
    inside ``(lo, U)`` with ``U = min(hi, cap[group], bound)``, ``cap`` being the
    group's smallest verified changed step, so every pass shrinks a bracket and
    the loop ends. The group's answer is ``cap`` (``bound``, censored, if no
    member changed).
    """
    tune = tune or BISECT
    dev = active.device
    N = G * S
    group = torch.arange(N, device=dev) // S
    mem_active = active[group]
    st = Brackets(N, bound, m0, s0, flip0, dev)
    cap = torch.full((G,), bound, dtype=torch.long, device=dev)
    nfw = torch.zeros(G, dtype=torch.long, device=dev)
    passes = 0
    # two host synchronisations per pass, both sizes: the live members (0 ends the loop) and the pairs
    while True:
        U = torch.minimum(torch.where(st.hik, st.hi, torch.full_like(st.hi, bound)), cap[group])
        live = mem_active & (U - st.lo > 1)
        mi = live.nonzero().squeeze(1)
        if len(mi) == 0:
            break
        c1, c2, unb = candidates(st, mi, U[mi], None if hint is None else hint[group[mi]], bound, tune)
        mem, cand = tested(mi, c1, c2)
        pred, marg = fwd(mem, cand)
        flip = pred != target_of[mem]
        nfw.index_add_(0, mem // S, torch.ones_like(mem))
        update_brackets(st, mi, U[mi], c1, c2, flip, marg, unb, requests=(mem, cand))
        cap.scatter_reduce_(0, group, torch.where(st.hik, st.hi, torch.full_like(st.hi, bound)), "amin")
        passes += 1
        if on_pass:
            on_pass(~group_any(live, group, G))
    found = cap < bound
    eps = torch.where(active, torch.where(found, cap, torch.full_like(cap, bound)), torch.zeros_like(cap))
    return eps, active & ~found, nfw, passes
