r"""APEM, the Adversarial Perturbation Explanation Metric (thesis chapter 3, section 5.2).

Definitions
-----------
A relevance map :math:`R \in [0, 1]^{C \times H \times W}` (``C`` = 1 or 3; one
channel is broadcast to the image's three, as the thesis read its one-channel
PNGs back as three equal channels) is turned into a *direction*

.. math::  d = \frac{R}{\lVert R \rVert_1} \odot \operatorname{sign}(g),
           \qquad g = \nabla_x \operatorname{CE}(f(x), t),

the L1 norm taken over all :math:`3 H W` values. The *irrelevance* map is
:math:`1 - R`. The perturbed input is :math:`x + \epsilon d` in pixel units
(no clipping unless ``clip=True``). With the target :math:`t` (the model's own
prediction by default), the prediction has *changed* at step :math:`\epsilon`
when :math:`\operatorname{argmax}_j f_j(x + \epsilon d) \neq t`, with
``torch.argmax`` semantics: a tie goes to the lowest class index, so a class
:math:`j < t` that ties the target's logit counts as a change and a class
:math:`j > t` that ties it does not.

- :math:`\epsilon^-`: the smallest integer step :math:`\epsilon \ge 1` at
  which the prediction changes along the direction of :math:`R`;
- :math:`\epsilon^+`: the same along the direction of :math:`1 - R`;
- :math:`\mathrm{APEM} = \frac1n \sum_i (\epsilon^+_i - \epsilon^-_i)`;
- :math:`\mathrm{APEM}_{norm} = \frac1n \sum_i \left(\frac{\epsilon^+_i}
  {\epsilon\text{-shuffle}^+_i} - \frac{\epsilon^-_i}{\epsilon\text{-shuffle}^-_i}\right)`
  (thesis 5.2), the shuffled epsilons coming from ``S`` random permutations of
  the normalised map (all :math:`3 H W` values of :math:`R / \lVert R\rVert_1`
  permuted), a step counting as a change as soon as any one of the ``S``
  shuffled directions changes the prediction.

Steps are searched in ``1 .. bound - 1`` (the thesis: ``bound = 10001``, it
tests ``sigma in range(start, 10001, pace)``). When no tested step changes the
prediction the item is **censored**: its value is ``bound`` (10001, what the
thesis's code returns) and ``censored`` is True -- a lower bound, never an
invented number. A map whose L1 norm is zero (e.g. ``1 - R`` for an all-ones
``R``), that has non-finite values, or whose direction vanishes (``sign(g) = 0``
wherever the map is non-zero) has no direction: it is **undefined**
(``undefined`` True, ``eps = 0``, a reason code, see :data:`REASONS`); it is
never divided by zero and never stops the rest of the batch.

Search modes
------------
All modes are batched: many images, relevance and irrelevance maps and
shuffles share each forward pass (at most ``batch_size`` perturbed images per
model call); maps refer to their image through ``image_index`` so ``x`` is not
replicated per map; all state stays on the model's device.

``linear``
    The reference: scans ``block`` consecutive steps per item per forward pass
    and returns the **true first step** that changes the prediction.
``thesis``
    The thesis's own coarse-to-fine search, reproduced exactly::

        start = 0
        for pace in (1000, 100, 10, 1):
            for sigma in range(start, bound, pace):
                if changed(sigma): break
                start = sigma
        eps = start + 1

    It re-tests ``start`` at each finer pace and tests ``sigma = 0`` (the
    clean image), one forward pass per tested sigma (counted in ``n_forward``
    exactly as the original did). When the prediction flips and flips back it
    returns the first flip *found on its coarse-to-fine grid*: a flip window
    ``[a, b)`` that holds no multiple of 1000 is skipped entirely, so its
    answer can be later than ``linear``'s. If the clean input is already not
    predicted as the target, ``eps = 1`` (the test at ``sigma = 0`` breaks
    every pace).
``bisect``
    A bracketed root search on the integers, all items in lockstep. It keeps a
    bracket ``lo < hi`` verified by forward passes: prediction unchanged at
    ``lo`` (``lo = 0`` is the clean image) and changed at ``hi``, and stops
    when ``hi = lo + 1``: ``eps = hi``. The candidates come from the margin
    :math:`m(\epsilon) = z_t - \max_{j\ne t} z_j` along the line (a smooth
    stand-in for "changed": :math:`m < 0` changes it, :math:`m = 0` is a tie).
    :math:`m(0)` comes from the clean forward pass and
    :math:`m'(0) = \nabla_x m \cdot d` from **one backward pass per image**,
    shared by every map of the image (relevance, irrelevance, every method,
    shuffles). Along such lines the margin is close to
    :math:`m(\epsilon) \approx m(0) + m'(0)\,\tau \log(1 + \epsilon/\tau)`, so
    the first probe aims at that model's root with ``tau`` from a prior; each
    unchanged probe refits ``tau``; the upper end is extrapolated with growth
    safeguards (each new step at least doubles the last, capped at the bound).
    Inside a known bracket the root is interpolated (inverse quadratic through
    the bracket ends and the previous point when it stays well inside the
    bracket, else regula falsi with the Illinois modification), and near the
    end the two integers around the estimate are tested in the same pass. The
    answer is always a verified integer bracket, never the margin estimate.
    When the prediction flips once and stays flipped, ``bisect == linear``.
    When it does not, ``bisect`` returns *some* flip boundary inside its
    bracket -- a step that changes the prediction whose predecessor does not
    -- which can be later than ``linear``'s (an early flip window that no
    probe lands in is missed), never a step that does not change it.
    Censoring assumes monotonicity too: an item is censored when step
    ``bound - 1`` does not change the prediction. If the clean input is not
    predicted as the target, the bracket cannot start at 0: step 1 is tested
    first and, if it changes the prediction, ``eps = 1`` (as ``linear``).

:func:`monotonicity_check` measures how often the flip is non-monotone on real
images (a linear scan past the first flip, up to a horizon).

Counting
--------
``n_forward`` counts the perturbed images forwarded per item (one per tested
step, ``S`` per tested step for a group of ``S`` shuffles), exactly what a
batch-1 implementation would forward. The shared per-image passes are not in
it: one clean forward and (``bisect``) one backward per *image* for the
margin gradient; :func:`evaluate_maps` reports them as ``n_image_passes``.

Shuffles
--------
``shuffle_mode="per_step"`` draws ``S`` new permutations at every tested step
(what the thesis did; for ``thesis`` and ``linear``); ``"fixed"`` draws one set
of ``S`` permutations per item (``thesis``, ``linear`` and ``bisect``). With
fixed shuffles ``linear`` returns the first step at which any of the ``S``
changes the prediction, i.e. :math:`\min_s \epsilon_s`, and ``bisect``
returns :math:`\min_s` of each shuffled direction's bisect answer (the
members share the group's best verified flip as the upper limit of their
brackets, so members whose bracket is already above it stop early).
Permutations come from ``torch.Generator`` seeded per item with the caller's
``seeds`` (the irrelevance map uses a seed derived from the same value):
an item's permutations depend only on its seed, never on batch composition
or order; per-step draws happen in (step, shuffle) order for each item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

SEARCH_MODES = ("thesis", "linear", "bisect")
SHUFFLE_MODES = ("fixed", "per_step")
THESIS_BOUND = 10001
THESIS_PACES = (1000, 100, 10, 1)

#: Reason codes for undefined items (``SearchResult.reason``); 0 = defined.
REASONS = (
    "",
    "zero L1 norm: the map is all zero, so it gives no direction",
    "the map has non-finite values",
    "zero direction: sign(grad) is 0 wherever the map is non-zero",
)
REASON_ZERO_NORM, REASON_NONFINITE, REASON_ZERO_DIRECTION = 1, 2, 3


# --------------------------------------------------------------------------- margins


def margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r""":math:`m = z_t - \max_{j \ne t} z_j` per row (> 0: the target is strictly ahead)."""
    zt = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf"))
    return zt - others.amax(1)


def changed(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``argmax != target`` with ``torch.argmax`` semantics (ties -> lowest index)."""
    return logits.argmax(1) != target


@dataclass
class MarginInfo:
    r"""Per-image quantities shared by every map of an image.

    ``target`` (B,), ``logits`` (B, K) clean logits, ``margin`` (B,)
    :math:`m(x)`, ``changed`` (B,) whether the clean input is already not the
    target, ``grad`` (B, 3, H, W) :math:`\nabla_x m(x)` (None for modes that do
    not need it).
    """

    target: torch.Tensor
    logits: torch.Tensor
    margin: torch.Tensor
    changed: torch.Tensor
    grad: torch.Tensor | None = None

    def slope(self, d: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        r"""Directional derivative :math:`m'(0) = \nabla_x m \cdot d` for every direction."""
        out = torch.empty(len(d), dtype=torch.float64, device=d.device)
        for s in range(0, len(d), 256):
            g = self.grad[image_index[s : s + 256]]
            out[s : s + 256] = (g.to(d.dtype) * d[s : s + 256]).flatten(1).sum(1, dtype=torch.float64)
        return out


def clean_pass(model, x, target=None, *, need_margin_grad=True, need_loss_grad=True, batch_size=64):
    r"""One forward per image and up to two backward passes.

    Returns ``(loss_grad, MarginInfo)``: ``loss_grad`` is
    :math:`\nabla_x \operatorname{CE}(f(x), t)` (the same formula as
    :func:`apem.grad.loss_gradient`: cross-entropy summed over the batch) or
    None, the MarginInfo carries :math:`\nabla_x m` when asked.
    """
    grads, mgrads, logits_all, targets = [], [], [], []
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size].detach().clone()
        tb = None if target is None else torch.as_tensor(target[s : s + batch_size], device=x.device).long()
        if not (need_margin_grad or need_loss_grad):
            with torch.no_grad():
                z = model(xb)
            tb = z.argmax(1) if tb is None else tb
        else:
            xb.requires_grad_(True)
            with torch.enable_grad():
                z = model(xb)
                tb = z.argmax(1) if tb is None else tb
                if need_loss_grad:
                    loss = F.cross_entropy(z, tb, reduction="sum")
                    (g,) = torch.autograd.grad(loss, xb, retain_graph=need_margin_grad)
                    grads.append(g.detach())
                if need_margin_grad:
                    (gm,) = torch.autograd.grad(margin(z, tb).sum(), xb)
                    mgrads.append(gm.detach())
        logits_all.append(z.detach())
        targets.append(tb)
    logits = torch.cat(logits_all)
    target = torch.cat(targets)
    info = MarginInfo(target, logits, margin(logits, target), changed(logits, target),
                      torch.cat(mgrads) if mgrads else None)
    return (torch.cat(grads) if grads else None), info


# --------------------------------------------------------------------------- directions


def _expand3(maps: torch.Tensor) -> torch.Tensor:
    if maps.dim() != 4 or maps.shape[1] not in (1, 3):
        raise ValueError(f"maps must have shape (M, 1 or 3, H, W), got {tuple(maps.shape)}")
    return maps.expand(-1, 3, -1, -1)


def directions(maps, grad, *, image_index=None, shuffle_perm=None, return_reason=False):
    r"""Directions :math:`d = R / \lVert R\rVert_1 \odot \operatorname{sign}(g)`.

    ``maps`` (M, 1 or 3, H, W); ``grad`` (M, 3, H, W) aligned with the maps,
    or per image (B, 3, H, W) with ``image_index`` (M,). ``shuffle_perm``
    (M, 3HW) or (3HW,): permute the flattened normalised 3-channel map before
    taking the sign, ``Rn.flatten()[perm]``. The normalisation is done in
    float64 and cast to the gradient's dtype, so scaling a map by a positive
    constant gives the same direction (bit for bit up to a final rounding).

    Returns ``(d, defined)`` (and ``reason`` codes with ``return_reason``);
    undefined rows of ``d`` are zero.
    """
    g = grad if image_index is None else grad[image_index]
    R = _expand3(maps).to(device=g.device)
    if R.shape[0] != g.shape[0] or R.shape[2:] != g.shape[2:]:
        raise ValueError(f"maps {tuple(maps.shape)} do not match gradients {tuple(g.shape)}")
    R64 = R.to(torch.float64)
    finite = torch.isfinite(R64).flatten(1).all(1)
    R64 = torch.where(torch.isfinite(R64), R64, torch.zeros((), dtype=torch.float64, device=R.device))
    norm = R64.abs().flatten(1).sum(1)
    ok = finite & (norm > 0)
    safe = torch.where(ok, norm, torch.ones_like(norm))
    Rn = (R64 / safe[:, None, None, None]).to(g.dtype) * ok[:, None, None, None]
    if shuffle_perm is not None:
        perm = shuffle_perm.to(Rn.device)
        flat = Rn.reshape(len(Rn), -1)
        flat = flat[:, perm] if perm.dim() == 1 else flat.gather(1, perm)
        Rn = flat.view_as(Rn)
    d = Rn * torch.sign(g)
    nonzero = (d != 0).flatten(1).any(1)
    defined = ok & nonzero
    if not return_reason:
        return d, defined
    reason = torch.zeros(len(d), dtype=torch.long, device=d.device)
    reason[ok & ~nonzero] = REASON_ZERO_DIRECTION
    reason[finite & ~(norm > 0)] = REASON_ZERO_NORM
    reason[~finite] = REASON_NONFINITE
    return d, defined, reason


def _child_seed(seed: int, k: int) -> int:
    """A 63-bit seed derived from ``(seed, k)`` (splitmix64), so streams do not overlap."""
    z = (int(seed) + 0x9E3779B97F4A7C15 * (k + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def shuffle_permutations(seed: int, n_values: int, shuffles: int) -> torch.Tensor:
    """``shuffles`` permutations of ``range(n_values)`` from ``torch.Generator().manual_seed(seed)`` (CPU)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.stack([torch.randperm(n_values, generator=gen) for _ in range(shuffles)])


# --------------------------------------------------------------------------- results


@dataclass
class SearchResult:
    """Per-item search outcome, tensors of shape (M,).

    ``eps``: the step (``bound`` when censored, 0 when undefined);
    ``censored``: no tested step changed the prediction; ``undefined``: no
    direction (see ``reason`` and :data:`REASONS`); ``n_forward``: perturbed
    images forwarded for the item; ``n_passes``: lockstep rounds (model-call
    groups) the search took for the whole batch.
    """

    eps: torch.Tensor
    censored: torch.Tensor
    undefined: torch.Tensor
    n_forward: torch.Tensor
    reason: torch.Tensor | None = None
    n_passes: int = 0

    def reasons(self) -> list[str]:
        """The reason string of every item ('' when defined)."""
        codes = self.reason.tolist() if self.reason is not None else [0] * len(self.eps)
        return [REASONS[c] for c in codes]

    def cpu(self) -> "SearchResult":
        return SearchResult(self.eps.cpu(), self.censored.cpu(), self.undefined.cpu(), self.n_forward.cpu(),
                            None if self.reason is None else self.reason.cpu(), self.n_passes)


# --------------------------------------------------------------------------- forwarding


def _wants_channels_last(model) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


class _Forward:
    """Forward perturbed images ``x[img] + e * d`` in batches of ``batch_size``.

    ``direction(members, steps)`` returns the directions of the requested
    (member, step) pairs, in request order; ``__call__`` returns the predicted
    class and the target margin of each pair. ``record`` (a list) receives
    ``(member, step, pred, margin)`` for every forwarded image (for :func:`trace`).
    """

    def __init__(self, model, x, target, img_of, direction, *, clip=False, batch_size=64, record=None):
        self.model, self.x, self.target, self.img_of = model, x, target, img_of
        self.direction, self.clip, self.batch_size, self.record = direction, clip, max(1, int(batch_size)), record
        self.channels_last = _wants_channels_last(model) and x.dim() == 4
        self.images = 0

    @torch.inference_mode()
    def __call__(self, members: torch.Tensor, steps: torch.Tensor):
        preds, margins = [], []
        for s in range(0, len(members), self.batch_size):
            mb, eb = members[s : s + self.batch_size], steps[s : s + self.batch_size]
            img = self.img_of[mb]
            d = self.direction(mb, eb)
            p = torch.addcmul(self.x[img], eb.to(d.dtype).view(-1, *([1] * (d.dim() - 1))), d)
            if self.clip:
                p.clamp_(0, 1)
            if self.channels_last:
                p = p.contiguous(memory_format=torch.channels_last)
            z = self.model(p)
            t = self.target[img]
            preds.append(z.argmax(1))
            margins.append(margin(z, t).to(torch.float64))
            if self.record is not None:
                self.record.append((mb.cpu(), eb.cpu(), preds[-1].cpu(), margins[-1].cpu()))
        self.images += len(members)
        if not preds:
            e = torch.empty(0, dtype=torch.long, device=self.x.device)
            return e, e.to(torch.float64)
        return torch.cat(preds), torch.cat(margins)


def _fixed_directions(d: torch.Tensor) -> Callable:
    return lambda members, steps: d[members]


class _PerStepShuffles:
    """Directions drawn afresh at every tested step: ``perm(Rn) * sign(g)``.

    Member ``m = item * S + s`` is shuffle ``s`` of ``item``. Each item owns a
    ``torch.Generator`` seeded with its seed; every requested (member, step)
    draws one permutation from its item's generator, in request order (the
    engines request (item, step, shuffle) in that order).
    """

    def __init__(self, Rn_flat, sign_g, img_of_item, seeds, shuffles, shape):
        self.Rn, self.sign, self.img_of_item, self.S, self.shape = Rn_flat, sign_g, img_of_item, shuffles, shape
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds.tolist()]
        self.n = Rn_flat.shape[1]

    def __call__(self, members, steps):
        items = (members // self.S).tolist()
        perms = torch.stack([torch.randperm(self.n, generator=self.gens[i]) for i in items]).to(self.Rn.device)
        it = members // self.S
        flat = self.Rn[it].gather(1, perm_long(perms))
        return flat.view(len(members), *self.shape) * self.sign[self.img_of_item[it]]


def perm_long(p: torch.Tensor) -> torch.Tensor:
    return p if p.dtype == torch.long else p.long()


# --------------------------------------------------------------------------- engines
# Every engine works on G groups of S members (member m = g * S + s); a group
# changes at a step as soon as one of its members does. Plain searches have S = 1.


def _group_any(flags: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    out = torch.zeros(n_groups, dtype=torch.long, device=flags.device)
    return out.scatter_add_(0, groups, flags.long()) > 0


def _thesis_engine(fwd, target_of, S, G, bound, active, paces=THESIS_PACES, on_pass=None):
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
        flip = _group_any(pred != target_of[mem], grp, G)
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


def _linear_engine(fwd, target_of, S, G, bound, active, block, on_pass=None):
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


# ---- bisect: the estimator

#: Tuning of the bisect search (see :func:`_bisect_engine`).
BISECT_TAU_PRIOR = 1.0  # tau = prior * m(0) / -m'(0)
BISECT_OVERSHOOT = 0.0  # aim the unbracketed probe this fraction above the root estimate
BISECT_MIN_GROWTH = 2.0  # an unbracketed step is at least this times the previous one


def _log_model_root(m0, s0, tau):
    r""":math:`\epsilon` where :math:`m_0 + s_0 \tau \log(1+\epsilon/\tau) = 0`."""
    z = (m0 / (-s0 * tau)).clamp(max=40.0)
    return tau * torch.expm1(z)


def _fit_tau(m0, s0, e, m, iters=40):
    r"""Solve :math:`m_0 + s_0 \tau \log(1 + e/\tau) = m` for tau (bisection in log tau).

    :math:`\tau\log(1+e/\tau)` grows from 0 to :math:`e` with tau; a drop
    :math:`m_0 - m` outside :math:`(0, -s_0 e)` has no solution (returns NaN).
    """
    drop = m0 - m
    target = drop / (-s0)  # want tau*log1p(e/tau) == target, in (0, e)
    ok = (drop > 0) & (target < e) & (s0 < 0) & (e > 0)
    lo = torch.full_like(m0, -20.0)
    hi = torch.full_like(m0, 30.0)
    ef = e.to(m0.dtype)
    for _ in range(iters):
        mid = (lo + hi) / 2
        tau = torch.exp(mid)
        val = tau * torch.log1p(ef / tau)
        big = val > target
        hi = torch.where(big, mid, hi)
        lo = torch.where(big, lo, mid)
    tau = torch.exp((lo + hi) / 2)
    return torch.where(ok, tau, torch.full_like(tau, float("nan")))


def _bisect_engine(fwd, target_of, S, G, bound, active, m0, s0, flip0, hint=None, on_pass=None):
    """Bracketed integer root search (see the module docstring), groups of S members in lockstep.

    Member state: ``lo`` (verified unchanged, or 0 = clean), ``hi`` (verified
    changed when ``hik``), their margins, the previous point for inverse
    quadratic interpolation, the Illinois counter. ``cap`` per group: the
    smallest verified changed step among its members; no member tests at or
    beyond it, members whose bracket reaches it stop.
    """
    dev = active.device
    N = G * S
    f64 = torch.float64
    group = torch.arange(N, device=dev) // S
    mem_active = active[group]
    lo = torch.zeros(N, dtype=torch.long, device=dev)
    hi = torch.full((N,), bound, dtype=torch.long, device=dev)
    hik = torch.zeros(N, dtype=torch.bool, device=dev)
    mlo = m0.to(f64).clone()
    mhi = torch.full((N,), float("nan"), dtype=f64, device=dev)
    ep = torch.full((N,), -1, dtype=torch.long, device=dev)  # previous point (IQI), -1 = none
    mp = torch.full((N,), float("nan"), dtype=f64, device=dev)
    side = torch.zeros(N, dtype=torch.long, device=dev)  # +k: lo kept k times in a row, -k: hi kept
    step_prev = torch.zeros(N, dtype=torch.long, device=dev)  # last unbracketed step size
    s0 = s0.to(f64)
    m0 = m0.to(f64)
    r0 = torch.where(s0 < 0, m0 / (-s0).clamp_min(1e-300), torch.full_like(m0, float("nan")))
    tau = BISECT_TAU_PRIOR * r0
    need_one = flip0.clone()  # clean input already changed: test step 1 first
    cap = torch.full((G,), bound, dtype=torch.long, device=dev)
    nfw = torch.zeros(G, dtype=torch.long, device=dev)
    passes = 0
    while True:
        U = torch.minimum(torch.where(hik, hi, torch.full_like(hi, bound)), cap[group])
        live = mem_active & (U - lo > 1)
        if not bool(live.any()):
            break
        mi = live.nonzero().squeeze(1)
        c1, c2 = _bisect_candidates(
            lo[mi], U[mi], hik[mi], mlo[mi], mhi[mi], ep[mi], mp[mi], side[mi], step_prev[mi],
            m0[mi], s0[mi], tau[mi], need_one[mi], None if hint is None else hint[group[mi]], bound,
        )
        two = c2 > 0
        mem = torch.cat([mi, mi[two]])
        cand = torch.cat([c1, c2[two]])
        order = torch.argsort(mem * 2 + torch.cat([torch.zeros_like(c1), torch.ones_like(c2[two])]), stable=True)
        mem, cand = mem[order], cand[order]
        pred, marg = fwd(mem, cand)
        flip = pred != target_of[mem]
        nfw.index_add_(0, mem // S, torch.ones_like(mem))
        # new bracket: hi = smallest changed candidate, lo = largest unchanged candidate below it
        big = torch.iinfo(torch.long).max
        fmin = torch.full((N,), big, dtype=torch.long, device=dev)
        fmin.scatter_reduce_(0, mem, torch.where(flip, cand, torch.full_like(cand, big)), "amin")
        new_hi = fmin < torch.where(hik, hi, torch.full_like(hi, big))
        below = ~flip & (cand < torch.minimum(fmin, torch.where(hik, hi, torch.full_like(hi, big)))[mem])
        umax = torch.full((N,), -1, dtype=torch.long, device=dev)
        umax.scatter_reduce_(0, mem, torch.where(below, cand, torch.full_like(cand, -1)), "amax")
        new_lo = umax > lo
        # margins at the new ends (the candidate equal to the new end)
        m_at = torch.full((N,), float("nan"), dtype=f64, device=dev)
        is_hi = flip & (cand == fmin[mem])
        m_at.index_put_((mem[is_hi],), marg[is_hi])
        m_lo_new = torch.full((N,), float("nan"), dtype=f64, device=dev)
        is_lo = below & (cand == umax[mem])
        m_lo_new.index_put_((mem[is_lo],), marg[is_lo])
        # previous point for IQI: the end that is replaced (prefer the hi side)
        upd = new_lo | new_hi
        ep = torch.where(new_hi & hik, hi, torch.where(new_lo, lo, ep))
        mp = torch.where(new_hi & hik, mhi, torch.where(new_lo, mlo, mp))
        ep = torch.where(upd & ~(new_hi & hik) & ~new_lo, ep, ep)
        # unbracketed growth bookkeeping
        step_prev = torch.where(new_lo & ~hik & ~new_hi, umax - lo, step_prev)
        # Illinois counters: which end stayed
        side = torch.where(new_lo & ~new_hi, torch.where(side < 0, side - 1, torch.full_like(side, -1)), side)
        side = torch.where(new_hi & ~new_lo, torch.where(side > 0, side + 1, torch.full_like(side, 1)), side)
        side = torch.where(new_hi & new_lo, torch.zeros_like(side), side)
        lo = torch.where(new_lo, umax, lo)
        mlo = torch.where(new_lo, m_lo_new, mlo)
        hi = torch.where(new_hi, fmin, hi)
        mhi = torch.where(new_hi, m_at, mhi)
        hik = hik | new_hi
        need_one = need_one & ~torch.zeros(N, dtype=torch.bool, device=dev).index_fill_(0, mi, True)
        # refit tau from the newest unchanged point while unbracketed
        refit = new_lo & ~hik & (lo > 0)
        if bool(refit.any()):
            t_new = _fit_tau(m0, s0, lo, mlo)
            tau = torch.where(refit & torch.isfinite(t_new), t_new, tau)
        cap.scatter_reduce_(0, group, torch.where(hik, hi, torch.full_like(hi, bound)), "amin")
        passes += 1
        if on_pass:
            on_pass(_group_any(~live, group, G))
    found = cap < bound
    eps = torch.where(active, torch.where(found, cap, torch.full_like(cap, bound)), torch.zeros_like(cap))
    return eps, active & ~found, nfw, passes


def _bisect_candidates(lo, U, hik, mlo, mhi, ep, mp, side, step_prev, m0, s0, tau, need_one, hint, bound):
    """Up to two integer candidates in ``(lo, U)`` per member (``c2 = 0``: none)."""
    f64 = torch.float64
    width = U - lo - 1  # untested integers strictly inside
    lof, Uf = lo.to(f64), U.to(f64)
    # -- unbracketed: extrapolate with the log model
    r_a = _log_model_root(m0, s0, tau)
    lin = lof + mlo * lof / (m0 - mlo).clamp_min(1e-300)  # secant through (0, m0), (lo, mlo)
    r_a = torch.where(torch.isfinite(r_a), r_a, lin)
    r_a = torch.where(torch.isfinite(r_a) & (r_a > 0), r_a, 2 * lof + 8)
    if hint is not None:
        use_hint = (lo == 0) & (hint > 0)
        r_a = torch.where(use_hint, hint.to(f64) - 0.5, r_a)
    r_a = r_a * (1 + BISECT_OVERSHOOT)
    growth = torch.where(lo > 0, lof + BISECT_MIN_GROWTH * step_prev.to(f64), r_a)
    r_a = torch.maximum(r_a, growth)
    # -- bracketed: regula falsi with Illinois, or inverse quadratic interpolation
    wl = torch.where(side <= -2, mlo * 0.5 ** (-side - 1).to(f64), mlo)
    wh = torch.where(side >= 2, mhi * 0.5 ** (side - 1).to(f64), mhi)
    den = (wl - wh)
    r_b = lof + (Uf - lof) * wl / torch.where(den > 0, den, torch.ones_like(den))
    r_b = torch.where(den > 0, r_b, (lof + Uf) / 2)
    # IQI through (lo, mlo), (hi, mhi), (ep, mp) when all distinct
    a, fa, b, fb, c, fc = lof, mlo, Uf, mhi, ep.to(f64), mp
    ok = (ep >= 0) & (fa != fb) & (fa != fc) & (fb != fc) & torch.isfinite(fc)
    iqi = (a * fb * fc / ((fa - fb) * (fa - fc)) + b * fa * fc / ((fb - fa) * (fb - fc))
           + c * fa * fb / ((fc - fa) * (fc - fb)))
    inside = ok & torch.isfinite(iqi) & (iqi > lof + 0.25 * (Uf - lof) * 0) & (iqi < Uf) & (iqi > lof)
    r_b = torch.where(inside & (side.abs() < 2), iqi, r_b)
    r = torch.where(hik, r_b, r_a)
    # -- integers around the estimate
    fl = torch.floor(r).clamp(min=-1, max=2**40).long()
    c1 = torch.minimum(torch.maximum(fl, lo + 1), U - 2).clamp(max=bound - 1)
    c1 = torch.maximum(c1, lo + 1)
    c2 = c1 + 1
    small = width <= 2
    c1 = torch.where(small, lo + 1, c1)
    c2 = torch.where(small, torch.where(width == 2, lo + 2, torch.zeros_like(lo)), c2)
    c2 = torch.where(c2 >= U, torch.zeros_like(c2), c2)
    # unbracketed and far from any evidence: one probe only
    single = ~hik & ~small
    c1 = torch.where(single, torch.minimum(torch.maximum(torch.ceil(r).clamp(max=2**40).long(), lo + 1), U - 1), c1)
    c2 = torch.where(single, torch.zeros_like(c2), c2)
    # clean input already changed: test step 1 alone first
    c1 = torch.where(need_one, torch.ones_like(c1), c1)
    c2 = torch.where(need_one, torch.zeros_like(c2), c2)
    return c1, c2
