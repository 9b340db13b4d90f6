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
model call; by default 4 on the CPU, whose cache-bound forward is fastest per
image in small batches, and 256 on an accelerator: :data:`AUTO_BATCH`); maps
refer to their image through ``image_index`` so ``x`` is not replicated per
map; all state stays on the model's device.

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
    :math:`m(0)` comes from the clean forward pass (one per *image*, shared
    by every map of the image: relevance, irrelevance, every method, shuffles)
    and the slope :math:`m'(0)` either from the cross-entropy gradient every
    mode already has, :math:`m'(0) \approx -g \cdot d / (1 - p_t)`
    (``slope="loss"``, free, the default of :func:`evaluate_maps`), or exactly
    from :math:`\nabla_x m \cdot d` with one backward pass per image
    (``slope="margin"``; :func:`search` uses it when it computes the
    per-image pass itself). Along such lines the margin is close to
    :math:`m(\epsilon) \approx m(0) + m'(0)\,\tau \log(1 + \epsilon/\tau)`
    (the drop slows down as the step grows), so:

    1. the first probe aims at that model's root with
       :math:`\tau = m(0)/(-m'(0))` (:math:`\approx 1.72\times` the
       first-order root :math:`m(0)/(-m'(0))`);
    2. while no upper end is known, each unchanged probe refits
       :math:`\tau` through it, and the next probe is the larger of that
       model's root and the two-point extrapolation; after 3 such probes each
       step at least doubles the previous one (growth safeguard), capped at
       ``bound - 1``;
    3. inside a bracket the estimate is the root of the two-parameter model
       :math:`m(0) - A\tau\log(1+\epsilon/\tau)` through the two tested
       points with the smallest :math:`|m|` (a secant through them when the
       model does not fit), kept strictly inside the bracket (else regula
       falsi on the bracket ends, else the midpoint); a Brent-style guard
       bisects a bracket that has not halved for 4 passes in a row, so the
       worst case stays logarithmic when the margin misleads (the secant on
       the best points replaces the Illinois trick: it never keeps a stale end);
    4. when a tested point lies within :math:`\max(1, 0.3\sqrt{r})` of the
       estimate :math:`r`, the two integers around it are tested in the same
       pass (with a 1-wide bracket that is the last pass).
    5. when two such pairs in a row both fall short of the root (a margin
       that flattens just above zero keeps every estimate a few steps low),
       the next steps go up from ``lo`` by the estimated distance times 2, 4,
       8, ..., never past the bracket's midpoint.

    Tuning lives in :class:`BisectTuning`; it changes the cost, never the
    validity of the answer. On EfficientNet-Lite0 gradient maps this takes
    about 4 forward passes per epsilon (``benchmarks/bench_search.py``). The
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
it: ``bisect``'s clean forward (and, with ``slope="margin"``, one backward)
per *image*, and the loss gradient when it is computed here;
:func:`evaluate_maps` reports them as ``n_image_passes`` and
``n_image_backward``.

Shuffles
--------
``shuffle_mode="per_step"`` draws ``S`` new permutations at every tested step
(what the thesis did; for ``thesis`` and ``linear``); ``"fixed"`` draws one set
of ``S`` permutations per item (``thesis``, ``linear`` and ``bisect``). With
fixed shuffles ``linear`` returns the first step at which any of the ``S``
changes the prediction, i.e. :math:`\min_s \epsilon_s` (each member's first
flip), and ``bisect`` returns the smallest verified flip boundary over the
members: each member runs its own bracket search, but the group's smallest
verified changed step caps every member's bracket (members whose bracket
reaches it stop). When every shuffled direction flips monotonically this is
:math:`\min_s \epsilon_s`, the ``linear`` value; otherwise it is a step
that changes the prediction for some member, never below ``linear``'s.
Permutations come from ``torch.Generator`` seeded per item with the caller's
``seeds`` (the irrelevance map uses a seed derived from the same value):
an item's permutations depend only on its seed, never on batch composition
or order; per-step draws happen in (step, shuffle) order for each item.
"""

from __future__ import annotations

import dataclasses
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
    "marked undefined by the caller",
)
REASON_ZERO_NORM, REASON_NONFINITE, REASON_ZERO_DIRECTION, REASON_CALLER = 1, 2, 3, 4


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
    target; for ``bisect``'s first estimate, either ``grad`` (B, 3, H, W)
    :math:`\nabla_x m(x)` (one backward pass per image) or ``loss_grad``
    (B, 3, H, W), the cross-entropy gradient :math:`g` the directions are built
    from (free: every mode needs it).
    """

    target: torch.Tensor
    logits: torch.Tensor
    margin: torch.Tensor
    changed: torch.Tensor
    grad: torch.Tensor | None = None
    loss_grad: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits, target=None, *, grad=None, loss_grad=None) -> "MarginInfo":
        """Build from clean logits (e.g. those :func:`apem.grad.loss_gradient` returns)."""
        target = logits.argmax(1) if target is None else torch.as_tensor(target, device=logits.device).long()
        return cls(target, logits, margin(logits, target), changed(logits, target), grad, loss_grad)

    def rest(self) -> torch.Tensor:
        r""":math:`1 - p_t` per image, from the logits in float64 (log-sum-exp of the other classes)."""
        lp = torch.log_softmax(self.logits.double(), 1)
        return torch.logsumexp(lp.scatter(1, self.target[:, None], float("-inf")), 1).exp()

    @property
    def has_slope(self) -> bool:
        return self.grad is not None or (self.loss_grad is not None and self.logits is not None)

    def slope(self, d: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        r"""Directional derivative :math:`m'(0)` of the margin along every direction.

        With ``grad``: :math:`\nabla_x m \cdot d`, exact. With ``loss_grad``
        only: :math:`-\,g \cdot d \,/\, (1 - p_t)` -- the cross-entropy
        gradient is :math:`g = \sum_{j \ne t} p_j (\nabla z_j - \nabla z_t)`,
        which is :math:`-(1 - p_t)\nabla m` when the other classes move
        together with the runner-up (on EfficientNet-Lite0 gradient maps the
        ratio to the exact slope has median 1.0, typically within 30%). It only
        seeds the search: a worse slope costs forward passes, never correctness.
        """
        src = (self.grad if self.grad is not None else self.loss_grad).to(d.dtype)
        out = torch.empty(len(d), dtype=torch.float64, device=d.device)
        # runs of consecutive directions of one image share its gradient by broadcasting (no gather)
        img, counts = torch.unique_consecutive(image_index, return_counts=True)
        a = 0
        for b, n in zip(img.tolist(), counts.tolist()):
            for s in range(a, a + n, 256):
                e = min(s + 256, a + n)
                out[s:e] = (src[b] * d[s:e]).flatten(1).sum(1, dtype=torch.float64)
            a += n
        if self.grad is None:
            out = -out / self.rest().to(out.device)[image_index].clamp_min(1e-300)
        return out


def _input_grad(out: torch.Tensor, x: torch.Tensor, retain: bool) -> torch.Tensor:
    """``d out / d x``; zeros when ``out`` does not depend on ``x`` differentiably."""
    if not out.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out, x, retain_graph=retain, allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()


def clean_pass(model, x, target=None, *, need_margin_grad=True, need_loss_grad=True, batch_size=None):
    r"""One forward per image and up to two backward passes.

    Returns ``(loss_grad, MarginInfo)``: ``loss_grad`` is
    :math:`\nabla_x \operatorname{CE}(f(x), t)` (the same formula as
    :func:`apem.grad.loss_gradient`: cross-entropy summed over the batch) or
    None, the MarginInfo carries :math:`\nabla_x m` when asked.
    """
    grads, mgrads, logits_all, targets = [], [], [], []
    batch_size = resolve_batch_size(batch_size, x.device)
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
                    grads.append(_input_grad(F.cross_entropy(z, tb, reduction="sum"), xb, need_margin_grad))
                if need_margin_grad:
                    mgrads.append(_input_grad(margin(z, tb).sum(), xb, False))
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


def _normalised(maps: torch.Tensor, dtype, device):
    r"""``(Rn, ok, reason)``: :math:`R / \lVert R \rVert_1` as (M, 3, H, W) in ``dtype`` (zero where undefined).

    The division is done in float64 and rounded once to ``dtype``, so a map
    scaled by a positive constant normalises to the same tensor (up to that
    one rounding; bit for bit for powers of two).
    """
    # Every step below is a pass over M x 3HW values, so the common case (finite, non-negative
    # maps) skips the ones that would not change a bit: the where, the abs and the masking.
    R = _expand3(maps).to(device=device)
    isf = torch.isfinite(R)
    finite = isf.flatten(1).all(1)
    R64 = R.to(torch.float64)
    if not bool(finite.all()):
        R64 = torch.where(isf, R64, torch.zeros((), dtype=torch.float64, device=device))
    del isf
    norm = (R64 if bool(R64.amin() >= 0) else R64.abs()).flatten(1).sum(1)
    ok = finite & (norm > 0)
    safe = torch.where(ok, norm, torch.ones_like(norm))
    Rn = (R64 / safe[:, None, None, None]).to(dtype)
    del R64
    if not bool(ok.all()):
        Rn[~ok] = 0
    reason = torch.zeros(len(Rn), dtype=torch.long, device=device)
    reason[finite & ~(norm > 0)] = REASON_ZERO_NORM
    reason[~finite] = REASON_NONFINITE
    return Rn, ok, reason


def _permute(Rn: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Permute all ``3 H W`` values of each row: ``Rn.flatten(1)[:, perm]``."""
    perm = perm.to(Rn.device).long()
    flat = Rn.reshape(len(Rn), -1)
    flat = flat[:, perm] if perm.dim() == 1 else flat.gather(1, perm)
    return flat.view_as(Rn)


def directions(maps, grad, *, image_index=None, shuffle_perm=None, return_reason=False, out=None):
    r"""Directions :math:`d = R / \lVert R\rVert_1 \odot \operatorname{sign}(g)`.

    ``maps`` (M, 1 or 3, H, W); ``grad`` (M, 3, H, W) aligned with the maps,
    or per image (B, 3, H, W) with ``image_index`` (M,). ``shuffle_perm``
    (M, 3HW) or (3HW,): permute the flattened normalised 3-channel map before
    taking the sign, ``Rn.flatten()[perm]``.

    Returns ``(d, defined)`` (and ``reason`` codes, see :data:`REASONS`, with
    ``return_reason``); undefined rows of ``d`` are zero. ``out``: an
    (M, 3, H, W) tensor (a view is fine) to write ``d`` into.
    """
    sg = torch.sign(grad)  # per image, then gathered: one pass over B images instead of M maps
    if image_index is not None:
        sg = sg[torch.as_tensor(image_index, device=grad.device).long()]
    if maps.shape[0] != sg.shape[0] or tuple(maps.shape[2:]) != tuple(sg.shape[2:]):
        raise ValueError(f"maps {tuple(maps.shape)} do not match gradients {tuple(sg.shape)}")
    Rn, ok, reason = _normalised(maps, grad.dtype, grad.device)
    if shuffle_perm is not None:
        Rn = _permute(Rn, shuffle_perm)
    d = torch.mul(Rn, sg, out=out)
    del Rn, sg
    nonzero = (d != 0).flatten(1).any(1)
    defined = ok & nonzero
    reason[ok & ~nonzero] = REASON_ZERO_DIRECTION
    return (d, defined, reason) if return_reason else (d, defined)


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


def map_shuffle_permutations(seed: int, n_values: int, shuffles: int, irrelevance: bool = False) -> torch.Tensor:
    """The ``shuffles`` fixed permutations :func:`evaluate_maps` uses for a map with per-item ``seed``.

    The relevance map (``eps_shuffle_minus``) draws from ``_child_seed(seed, 0)``
    and the irrelevance map (``eps_shuffle_plus``) from ``_child_seed(seed, 1)``;
    per-step shuffles draw from the same generators, ``shuffles`` per tested step.
    """
    return shuffle_permutations(_child_seed(int(seed), 1 if irrelevance else 0), n_values, shuffles)


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


#: Perturbed images per model call when ``batch_size`` is None, per device type. On the CPU the
#: forward pass is cache-bound: on 2 cores EfficientNet-Lite0 forwards about 1.5-2x more images per
#: second in batches of 2-4 than one at a time, and about 3x more than in batches of 32
#: (``benchmarks/bench_search.py --batch-sizes 1,2,4,8,32``); accelerators want large batches.
AUTO_BATCH = {"cpu": 4}
AUTO_BATCH_ACCELERATOR = 256


def resolve_batch_size(batch_size, device) -> int:
    """``batch_size`` as a positive int; None picks :data:`AUTO_BATCH` for ``device``'s type."""
    if batch_size is None:
        kind = torch.device(device).type
        return AUTO_BATCH.get(kind, AUTO_BATCH_ACCELERATOR)
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be >= 1 (or None for the device's default), got {batch_size}")
    return b


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

    def __init__(self, model, x, target, img_of, direction, *, clip=False, batch_size=None, record=None):
        self.model, self.x, self.target, self.img_of = model, x, target, img_of
        self.batch_size = resolve_batch_size(batch_size, x.device)
        self.direction, self.clip, self.record = direction, clip, record
        self.channels_last = _wants_channels_last(model) and x.dim() == 4
        if self.channels_last:  # once here, so that perturbed batches come out channels_last without a copy
            self.x = x.contiguous(memory_format=torch.channels_last)
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
    """Directions drawn afresh at every tested step: ``permute(Rn) * sign(g)``.

    Member ``m = item * S + s`` is shuffle ``s`` of ``item``. Each item owns a
    ``torch.Generator`` seeded with its seed; every requested (member, step)
    draws one permutation from its item's generator, in request order (the
    engines request (item, step, shuffle) in that order), so an item's draws
    depend only on its seed and its own sequence of tested steps.
    """

    def __init__(self, Rn, sign_g, img_of_item, seeds, shuffles):
        self.Rn, self.sign, self.img_of_item, self.S = Rn, sign_g, img_of_item, shuffles
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds.tolist()]
        self.n = Rn[0].numel()

    def __call__(self, members, steps):
        it = members // self.S
        perms = torch.stack([torch.randperm(self.n, generator=self.gens[i]) for i in it.tolist()])
        return _permute(self.Rn[it], perms) * self.sign[self.img_of_item[it]]


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


# ---- bisect


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


def _log_model_root(m0, s0, tau):
    r"""Root of :math:`m_0 + s_0 \tau \log(1 + \epsilon/\tau)`: :math:`\tau\,(e^{m_0 / (-s_0 \tau)} - 1)`."""
    z = (m0 / (-s0 * tau)).clamp(max=40.0)
    return tau * torch.expm1(z)


def _bisect_log_tau(lhs_of_tau, target, iters=LOG_TAU_ITERS):
    """Solve the decreasing-in-tau equation ``lhs(tau) = target`` by bisection on log tau in [e^-20, e^30]."""
    lo = torch.full_like(target, -20.0)
    hi = torch.full_like(target, 30.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        small = lhs_of_tau(torch.exp(mid)) > target  # lhs decreases with tau: root lies above mid
        lo = torch.where(small, mid, lo)
        hi = torch.where(small, hi, mid)
    return torch.exp((lo + hi) / 2)


def _fit_tau(m0, s0, e, m):
    r"""Solve :math:`m_0 + s_0 \tau \log(1 + e/\tau) = m` for :math:`\tau` (NaN when impossible).

    :math:`\tau \log(1 + e/\tau)` grows from 0 to :math:`e` with :math:`\tau`,
    so a solution exists iff the drop :math:`m_0 - m` is in :math:`(0, -s_0 e)`.
    """
    ef = e.to(m0.dtype)
    target = (m0 - m) / (-s0)
    ok = (s0 < 0) & (m0 - m > 0) & (target < ef) & (ef > 0)
    tau = _bisect_log_tau(lambda t: -(t * torch.log1p(ef / t)), -target)
    return torch.where(ok, tau, torch.full_like(tau, float("nan")))


def _fit2_root(m0, e1, m1, e2, m2):
    r"""Root of :math:`m_0 - A \tau \log(1 + \epsilon/\tau)` through :math:`(e_1, m_1), (e_2, m_2)`, NaN if none.

    The ratio :math:`\log(1+e_1/\tau)/\log(1+e_2/\tau)` (:math:`e_1 < e_2`)
    falls from 1 to :math:`e_1/e_2` as :math:`\tau` grows; the observed drop
    ratio :math:`(m_0 - m_1)/(m_0 - m_2)` must lie in between.
    """
    f1, f2 = e1.to(m0.dtype), e2.to(m0.dtype)
    d1, d2 = m0 - m1, m0 - m2
    ratio = d1 / d2
    ok = (d1 > 0) & (d2 > 0) & (f1 > 0) & (f1 < f2) & (ratio < 1) & (ratio > f1 / f2)
    tau = _bisect_log_tau(lambda t: torch.log1p(f1 / t) / torch.log1p(f2 / t), ratio)
    A = d2 / (tau * torch.log1p(f2 / tau))
    root = tau * torch.expm1((m0 / (A * tau)).clamp(max=40.0))
    return torch.where(ok, root, torch.full_like(root, float("nan")))


def _secant_root(e1, m1, e2, m2):
    """Zero of the line through ``(e1, m1)`` and ``(e2, m2)`` (NaN when undefined)."""
    f1, f2 = e1.to(m1.dtype), e2.to(m1.dtype)
    den = m2 - m1
    ok = (e1 >= 0) & (e2 >= 0) & (den != 0) & torch.isfinite(den)
    r = f1 - m1 * (f2 - f1) / torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok, r, torch.full_like(r, float("nan")))


class _BisectState:
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


def _bisect_estimate(st: _BisectState, mi, U, hint, bound, tune: BisectTuning):
    """Real-valued root estimate for members ``mi`` (see the module docstring)."""
    f64 = torch.float64
    lo, mlo, hi, mhi, hik = st.lo[mi], st.mlo[mi], st.hi[mi], st.mhi[mi], st.hik[mi]
    m0, s0 = st.m0[mi], st.s0[mi]
    lof = lo.to(f64)
    nan = torch.full_like(m0, float("nan"))
    be, bm = st.be[mi], st.bm[mi]
    rs = _secant_root(be[:, 0], bm[:, 0], be[:, 1], bm[:, 1])
    if tune.fit2_best:
        swap = be[:, 0] > be[:, 1]
        e1, e2 = torch.where(swap, be[:, 1], be[:, 0]), torch.where(swap, be[:, 0], be[:, 1])
        g1, g2 = torch.where(swap, bm[:, 1], bm[:, 0]), torch.where(swap, bm[:, 0], bm[:, 1])
        rf = _fit2_root(m0, e1, g1, e2, g2)
        rs = torch.where(torch.isfinite(rf), rf, rs)
    # -- no verified upper end: extrapolate
    r0 = torch.where(s0 < 0, m0 / (-s0), nan)
    first = _log_model_root(m0, s0, tune.tau_prior * r0)
    first = torch.where(torch.isfinite(first) & (first > 0), first, torch.full_like(first, 16.0))
    if hint is not None:
        first = torch.where(hint > 0, hint.to(f64) - 0.5, first)
    tau = _fit_tau(m0, s0, lo, mlo)
    refit = _log_model_root(m0, s0, tau)
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
    f2 = torch.where(lo > 0, _fit2_root(m0, lo, mlo, hi, mhi), _log_model_root(m0, s0, _fit_tau(m0, s0, hi, mhi)))
    r_b = torch.where(~inside(r_b) & inside(f2), f2, r_b)
    falsi = lof + (hi.to(f64) - lof) * mlo / (mlo - mhi)
    r_b = torch.where(~inside(r_b) & inside(falsi), falsi, r_b)
    r_b = torch.where(inside(r_b), r_b, (lof + Uf) / 2)
    return torch.where(hik, r_b, r_un).clamp(max=float(bound))


def _bisect_candidates(st: _BisectState, mi, U, hint, bound, tune: BisectTuning):
    """Up to two integer candidates in ``(lo, U)`` per member ``mi`` (``c2 = 0``: none)."""
    lo, hik = st.lo[mi], st.hik[mi]
    r = _bisect_estimate(st, mi, U, hint, bound, tune)
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


def _bisect_update(st: _BisectState, mi, U, c1, c2, flip, marg, unbracketed_pass):
    """Shrink the brackets with the tested candidates (pairs ``(c1, c2)`` of members ``mi``, limits ``U``)."""
    N = len(st.lo)
    dev = st.lo.device
    f64 = torch.float64
    two = c2 > 0
    n1 = len(mi)
    mem = torch.cat([mi, mi[two]])
    cand = torch.cat([c1, c2[two]])
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
    m_hi = torch.full((N,), float("nan"), dtype=f64, device=dev)
    sel = flip & (cand == fmin[mem])
    m_hi[mem[sel]] = marg[sel]
    m_lo = torch.full((N,), float("nan"), dtype=f64, device=dev)
    sel = below & (cand == umax[mem])
    m_lo[mem[sel]] = marg[sel]
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
    st.need_one[mi] = False
    # confident pairs (and the jumps after them) that all fell short of the root, in a row
    anyflip = torch.zeros(N, dtype=torch.bool, device=dev)
    anyflip[mem[flip]] = True
    short = ~anyflip[mi] & (two | (st.low_pairs[mi] > 0))
    st.low_pairs[mi] = torch.where(short, st.low_pairs[mi] + 1, torch.zeros_like(st.low_pairs[mi]))
    # keep the two points with the smallest |margin|
    E = torch.cat([st.be, torch.full((N, 2), -1, dtype=torch.long, device=dev)], 1)
    Mg = torch.cat([st.bm, torch.full((N, 2), float("nan"), dtype=f64, device=dev)], 1)
    slot = torch.cat([torch.full((n1,), 2, device=dev), torch.full((len(cand) - n1,), 3, device=dev)])
    E[mem, slot] = cand
    Mg[mem, slot] = marg
    key = torch.where((E > 0) & torch.isfinite(Mg), Mg.abs(), torch.full_like(Mg, float("inf")))
    # ties: the most recent point first (slots 2, 3 before 0, 1)
    order = torch.argsort(key[:, [2, 3, 0, 1]], dim=1, stable=True)[:, :2]
    order = torch.tensor([2, 3, 0, 1], device=dev)[order]
    st.be = E.gather(1, order)
    st.bm = Mg.gather(1, order)
    st.be = torch.where(torch.isfinite(st.bm), st.be, torch.full_like(st.be, -1))


def _bisect_engine(fwd, target_of, S, G, bound, active, m0, s0, flip0, hint=None, on_pass=None, tune=None):
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
    st = _BisectState(N, bound, m0, s0, flip0, dev)
    cap = torch.full((G,), bound, dtype=torch.long, device=dev)
    nfw = torch.zeros(G, dtype=torch.long, device=dev)
    passes = 0
    while True:
        U = torch.minimum(torch.where(st.hik, st.hi, torch.full_like(st.hi, bound)), cap[group])
        live = mem_active & (U - st.lo > 1)
        if not bool(live.any()):
            break
        mi = live.nonzero().squeeze(1)
        c1, c2, unb = _bisect_candidates(st, mi, U[mi], None if hint is None else hint[group[mi]], bound, tune)
        two = c2 > 0
        mem = torch.cat([mi, mi[two]])
        cand = torch.cat([c1, c2[two]])
        pred, marg = fwd(mem, cand)
        flip = pred != target_of[mem]
        nfw.index_add_(0, mem // S, torch.ones_like(mem))
        _bisect_update(st, mi, U[mi], c1, c2, flip, marg, unb)
        cap.scatter_reduce_(0, group, torch.where(st.hik, st.hi, torch.full_like(st.hi, bound)), "amin")
        passes += 1
        if on_pass:
            on_pass(~_group_any(live, group, G))
    found = cap < bound
    eps = torch.where(active, torch.where(found, cap, torch.full_like(cap, bound)), torch.zeros_like(cap))
    return eps, active & ~found, nfw, passes


# --------------------------------------------------------------------------- public search


def _check_mode(mode: str, bound: int) -> None:
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {mode!r}; choose one of {SEARCH_MODES}")
    if int(bound) < 2:
        raise ValueError(f"bound must be >= 2 (steps 1 .. bound-1 are tested), got {bound}")


def _as_index(image_index, n, dev):
    if image_index is None:
        return torch.arange(n, device=dev)
    return torch.as_tensor(image_index, device=dev).long()


def _image_info(model, x, target, mode, margin_info, batch_size, image_index=None):
    """Target (and, for ``bisect``, margin and its gradient) per image; ``(info, n_clean_passes)``.

    Only the images ``image_index`` refers to get the clean pass.
    """
    if margin_info is not None:
        if mode != "bisect" or margin_info.has_slope:
            return margin_info, 0
        target = margin_info.target if target is None else target
    elif mode != "bisect" and target is not None:
        t = torch.as_tensor(target, device=x.device).long()
        return MarginInfo(t, None, None, torch.zeros(len(t), dtype=torch.bool, device=x.device)), 0
    ii = torch.arange(len(x), device=x.device) if image_index is None else image_index
    _, info, n = _clean_pass_used(model, x, ii, target, need_margin_grad=mode == "bisect", need_loss_grad=False,
                                  batch_size=batch_size)
    return info, n


def _run_engine(mode, fwd, target_of, S, G, bound, active, *, block=32, info=None, img_of_member=None,
                d=None, hint=None, on_pass=None):
    """Dispatch to the engine of ``mode``; returns ``(eps, censored, n_forward, passes)`` per group."""
    if mode == "thesis":
        return _thesis_engine(fwd, target_of, S, G, bound, active, on_pass=on_pass)
    if mode == "linear":
        return _linear_engine(fwd, target_of, S, G, bound, active, int(block), on_pass=on_pass)
    m0 = info.margin[img_of_member]
    flip0 = info.changed[img_of_member]
    s0 = info.slope(d, img_of_member)
    return _bisect_engine(fwd, target_of, S, G, bound, active, m0, s0, flip0, hint=hint, on_pass=on_pass)


def search(model, x, d, target=None, *, image_index=None, mode="bisect", bound=THESIS_BOUND, clip=False,
           batch_size=None, block=32, defined=None, margin_info=None, hint=None, reason=None,
           _record=None, _on_pass=None) -> SearchResult:
    r"""The smallest integer step :math:`\epsilon \in [1, bound)` with ``argmax f(x + eps d) != target``.

    ``x`` (B, 3, H, W) images; ``d`` (M, 3, H, W) directions (see
    :func:`directions`); ``image_index`` (M,) the image of each direction
    (default ``arange(M)``, B = M); ``target`` (B,) per image, default the
    model's prediction. ``defined`` (M,) False marks items without a direction
    (default: ``d`` non-zero and finite). ``margin_info``: the per-image
    :class:`MarginInfo` (computed here when None). ``hint`` (M,) an expected
    ``eps`` per item (``bisect`` tests ``hint - 1, hint`` first; 0 = none).
    See the module docstring for the modes; the result is on ``x``'s device.
    """
    _check_mode(mode, bound)
    dev = x.device
    M = len(d)
    ii = _as_index(image_index, M, dev)
    finite = torch.isfinite(d).flatten(1).all(1) if M else torch.zeros(0, dtype=torch.bool, device=dev)
    auto = finite & (d != 0).flatten(1).any(1) if M else finite
    if reason is None:
        reason = torch.zeros(M, dtype=torch.long, device=dev)
        reason[~finite] = REASON_NONFINITE
        reason[finite & ~auto] = REASON_ZERO_DIRECTION
    reason = reason.to(dev).clone()
    if defined is not None:
        defined = torch.as_tensor(defined, device=dev).bool()
        reason[~defined & (reason == 0)] = REASON_CALLER
        active = defined & auto
    else:
        active = auto
    reason[~active & (reason == 0)] = REASON_ZERO_DIRECTION
    reason[active] = 0
    if M == 0:
        z = torch.zeros(0, dtype=torch.long, device=dev)
        return SearchResult(z, z.bool(), z.bool(), z, z, 0)
    info, _ = _image_info(model, x, target, mode, margin_info, batch_size, ii)
    target_of = info.target[ii]
    fwd = _Forward(model, x, info.target, ii, _fixed_directions(d), clip=clip, batch_size=batch_size, record=_record)
    hint_t = None if hint is None else torch.as_tensor(hint, device=dev).long()
    eps, cens, nfw, passes = _run_engine(mode, fwd, target_of, 1, M, int(bound), active, block=block, info=info,
                                         img_of_member=ii, d=d, hint=hint_t, on_pass=_on_pass)
    return SearchResult(eps, cens, ~active, nfw, reason, passes)


def trace(model, x, d, target=None, *, mode="bisect", bound=THESIS_BOUND, clip=False, block=32,
          margin_info=None) -> list[dict]:
    """Every tested step of ONE item, in the order tested.

    ``x`` (3, H, W) or (1, 3, H, W), ``d`` likewise. Returns a list of
    ``dict(eps, pred, margin, changed, pass_)`` (``pass_``: the lockstep round
    that tested it); the last entry also holds ``result``: the item's
    ``eps``, ``censored``, ``undefined`` and ``n_forward``.
    """
    x = x if x.dim() == 4 else x[None]
    d = d if d.dim() == 4 else d[None]
    info, _ = _image_info(model, x, target, mode, margin_info, 64)
    if not info.has_slope and mode == "bisect":
        _, info = clean_pass(model, x, info.target, need_loss_grad=False)
    t = int(info.target[0])
    rec: list = []
    res = search(model, x, d, info.target, mode=mode, bound=bound, clip=clip, batch_size=max(2, int(block)),
                 block=block, margin_info=info, _record=rec)
    out = [dict(eps=int(e), pred=int(p), margin=float(m), changed=int(p) != t, pass_=k)
           for k, (_, eb, pb, mg) in enumerate(rec) for e, p, m in zip(eb.tolist(), pb.tolist(), mg.tolist())]
    if out:
        out[-1]["result"] = dict(eps=int(res.eps[0]), censored=bool(res.censored[0]),
                                 undefined=bool(res.undefined[0]), n_forward=int(res.n_forward[0]))
    return out


# --------------------------------------------------------------------------- maps -> epsilons


def _clean_pass_used(model, x, image_index, target, *, need_margin_grad, need_loss_grad, batch_size):
    """:func:`clean_pass` on the images that ``image_index`` refers to only, scattered back to all B images.

    Rows of images no map refers to hold zeros (target 0). Returns ``(grad, info, n_images_passed)``.
    """
    used = torch.unique(image_index)
    if len(used) == len(x):
        g, info = clean_pass(model, x, target, need_margin_grad=need_margin_grad, need_loss_grad=need_loss_grad,
                             batch_size=batch_size)
        return g, info, len(x)
    t_used = None if target is None else torch.as_tensor(target, device=x.device).long()[used]
    g, info = clean_pass(model, x[used], t_used, need_margin_grad=need_margin_grad, need_loss_grad=need_loss_grad,
                         batch_size=batch_size)

    def full(v):
        if v is None:
            return None
        out = torch.zeros((len(x), *v.shape[1:]), dtype=v.dtype, device=v.device)
        out[used] = v
        return out

    info = MarginInfo(full(info.target), full(info.logits), full(info.margin), full(info.changed), full(info.grad))
    if target is not None:
        info.target = torch.as_tensor(target, device=x.device).long()
    return full(g), info, len(used)


SLOPES = ("loss", "margin")


def prepare_images(model, x, image_index, target=None, *, grad=None, margin_info=None, mode="bisect", slope="loss",
                   batch_size=None):
    r"""What the searches need per image, computed once: ``(grad, info, n_forward, n_backward)``.

    ``grad``: the cross-entropy gradient (computed when None: one forward and
    one backward per referenced image). ``info``: :class:`MarginInfo` with the
    target (the prediction unless given) and, for ``bisect``, the clean
    logits and the slope source: ``slope="loss"`` uses ``grad`` itself (no
    extra pass, see :meth:`MarginInfo.slope`), ``slope="margin"`` the exact
    margin gradient (one more backward per image). Only images that
    ``image_index`` refers to are passed; the counts say how many passes ran.
    """
    if slope not in SLOPES:
        raise ValueError(f"unknown slope {slope!r}; choose one of {SLOPES}")
    dev = x.device
    info = margin_info
    want_mgrad = mode == "bisect" and slope == "margin" and (info is None or info.grad is None)
    need_fwd = (info is None and target is None) or (mode == "bisect" and (info is None or info.logits is None))
    n_fwd = n_back = 0
    if grad is None or want_mgrad or need_fwd:
        t_in = target if target is not None else (None if info is None else info.target)
        g2, info2, n_fwd = _clean_pass_used(model, x, image_index, t_in, need_margin_grad=want_mgrad,
                                            need_loss_grad=grad is None, batch_size=batch_size)
        n_back = n_fwd * (int(grad is None) + int(want_mgrad))
        grad = g2 if grad is None else grad
        if info is None or want_mgrad or need_fwd:
            info = info2
    if info is None:  # thesis / linear with a given target: nothing to run
        t = torch.as_tensor(target, device=dev).long()
        info = MarginInfo(t, None, None, torch.zeros(len(t), dtype=torch.bool, device=dev))
    if mode == "bisect" and info.grad is None and info.loss_grad is None:
        info = dataclasses.replace(info, loss_grad=grad)
    return grad.to(dev), info, n_fwd, n_back


def _progress_bar(progress, total, desc):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", leave=False)


def _check_maps(maps):
    if maps.numel() and (maps.amin() < 0 or maps.amax() > 1):
        raise ValueError(f"maps must lie in [0, 1] (got [{float(maps.amin()):g}, {float(maps.amax()):g}])")


def evaluate_maps(model, x, maps, target=None, *, image_index=None, grad=None, mode="bisect",
                  bound=THESIS_BOUND, shuffles=0, shuffle_mode="fixed", seeds=None, clip=False, batch_size=None,
                  progress=False, block=32, margin_info=None, hints=None, max_directions=256,
                  slope="loss") -> dict:
    r"""Epsilons of relevance maps: :math:`\epsilon^-` from ``maps``, :math:`\epsilon^+` from ``1 - maps``.

    ``x`` (B, 3, H, W) images in the model's input space; ``maps`` (M, 1 or 3,
    H, W) in [0, 1]; ``image_index`` (M,) the image of each map (default
    ``arange(M)``). ``grad`` (B, 3, H, W): the loss gradients giving
    :math:`\operatorname{sign}(g)` (computed with the cross-entropy at
    ``target``, default the prediction, when None). ``shuffles = S > 0`` adds
    the shuffled baseline (thesis 5.2) with per-map ``seeds`` (M,) (default
    ``arange(M)``). ``hints``: optional ``(eps_minus, eps_plus)`` expected
    values (``bisect`` starts there). ``max_directions`` bounds how many
    (M, 3, H, W) direction tensors are held at once.

    Returns (all on the CPU): ``eps_minus, eps_plus, censored_minus,
    censored_plus, undefined_minus, undefined_plus, reason_minus, reason_plus,
    n_forward_minus, n_forward_plus, n_forward`` (= minus + plus, perturbed
    images forwarded), ``n_image_passes`` (0-d: images that got the shared clean
    forward/backward pass here), and with shuffles ``eps_shuffle_minus,
    eps_shuffle_plus, censored_shuffle_minus, censored_shuffle_plus,
    n_forward_shuffle_minus, n_forward_shuffle_plus`` (S images per tested step).
    """
    _check_mode(mode, bound)
    if shuffle_mode not in SHUFFLE_MODES:
        raise ValueError(f"unknown shuffle_mode {shuffle_mode!r}; choose one of {SHUFFLE_MODES}")
    if shuffles and shuffle_mode == "per_step" and mode == "bisect":
        raise ValueError("per-step shuffles need a scan (mode 'thesis' or 'linear'); bisect uses shuffle_mode='fixed'")
    dev = x.device
    M = len(maps)
    ii = _as_index(image_index, M, dev)
    maps = maps.to(dev)
    _check_maps(maps)
    grad, info, n_clean, n_back = prepare_images(model, x, ii, target, grad=grad, margin_info=margin_info, mode=mode,
                                                 slope=slope, batch_size=batch_size)
    out = {k: [] for k in ("eps", "censored", "undefined", "reason", "n_forward")}
    bar = _progress_bar(progress, 2 * M * (2 if shuffles else 1), f"apem {mode}")
    chunk = max(1, int(max_directions) // 2)
    for s in range(0, M, chunk):
        sl = slice(s, min(s + chunk, M))
        res = _plain_chunk(model, x, maps[sl], ii[sl], grad, info, mode, bound, clip, batch_size, block,
                           None if hints is None else (hints[0][sl], hints[1][sl]), bar)
        for k in out:
            out[k].append(getattr(res, k))
    res = {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}
    result = _split_pm(res, "")
    result["n_forward"] = result["n_forward_minus"] + result["n_forward_plus"]
    result["n_image_passes"] = torch.tensor(n_clean)
    result["n_image_backward"] = torch.tensor(n_back)
    if shuffles:
        seeds = torch.arange(M) if seeds is None else torch.as_tensor(seeds).long().cpu()
        outs = {k: [] for k in ("eps", "censored", "n_forward")}
        chunk = max(1, int(max_directions) // (2 * int(shuffles)))
        for s in range(0, M, chunk):
            sl = slice(s, min(s + chunk, M))
            r = _shuffle_chunk(model, x, maps[sl], ii[sl], grad, info, mode, bound, clip, batch_size, block,
                               int(shuffles), shuffle_mode, seeds[sl], bar)
            for k in outs:
                outs[k].append(r[k])
        sh = _split_pm({k: torch.cat(v) for k, v in outs.items()}, "")
        result.update({"eps_shuffle_minus": sh["eps_minus"], "eps_shuffle_plus": sh["eps_plus"],
                       "censored_shuffle_minus": sh["censored_minus"], "censored_shuffle_plus": sh["censored_plus"],
                       "n_forward_shuffle_minus": sh["n_forward_minus"],
                       "n_forward_shuffle_plus": sh["n_forward_plus"]})
    if bar is not None:
        bar.close()
    return result


def _split_pm(res: dict, prefix: str) -> dict:
    """Chunks store [minus rows, plus rows] per chunk: undo that into ``*_minus`` / ``*_plus``."""
    out = {}
    for k, v in res.items():
        v = v.cpu()
        out[f"{prefix}{k}_minus"], out[f"{prefix}{k}_plus"] = v[0::2], v[1::2]
    return out


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows a0, b0, a1, b1, ...: minus and plus of a map side by side."""
    return torch.stack([a, b], 1).reshape(-1, *a.shape[1:])


def _bar_hook(bar, offset=0):
    if bar is None:
        return None
    state = {"last": 0}

    def hook(done):
        n = int(done.sum())
        bar.update(n - state["last"])
        state["last"] = n

    return hook


def _plain_chunk(model, x, maps, ii, grad, info, mode, bound, clip, batch_size, block, hints, bar):
    """Search minus and plus directions of a chunk of maps together (rows interleaved)."""
    # minus and plus directions written straight into their interleaved rows (no stacking copy)
    d = torch.empty((2 * len(maps), 3, *grad.shape[2:]), dtype=grad.dtype, device=grad.device)
    _, ok_m, rs_m = directions(maps, grad, image_index=ii, return_reason=True, out=d[0::2])
    _, ok_p, rs_p = directions(1 - maps, grad, image_index=ii, return_reason=True, out=d[1::2])
    hint = None if hints is None else _interleave(torch.as_tensor(hints[0]).to(ii.device).long(),
                                                  torch.as_tensor(hints[1]).to(ii.device).long())
    res = search(model, x, d, info.target, image_index=ii.repeat_interleave(2), mode=mode, bound=bound, clip=clip,
                 batch_size=batch_size, block=block, defined=_interleave(ok_m, ok_p), margin_info=info,
                 hint=hint, reason=_interleave(rs_m, rs_p), _on_pass=_bar_hook(bar))
    return res


def _shuffle_chunk(model, x, maps, ii, grad, info, mode, bound, clip, batch_size, block, S, shuffle_mode, seeds, bar):
    """Shuffled epsilons of a chunk: groups (map, minus|plus) of S shuffled members."""
    dev = x.device
    n = 3 * maps.shape[-2] * maps.shape[-1]
    Rm, ok_m, _ = _normalised(maps, grad.dtype, dev)
    Rp, ok_p, _ = _normalised(1 - maps, grad.dtype, dev)
    Rn = _interleave(Rm, Rp)
    del Rm, Rp
    active = _interleave(ok_m, ok_p)
    item_seeds = torch.tensor([_child_seed(int(s), k) for s in seeds.tolist() for k in (0, 1)], dtype=torch.long)
    G = len(Rn)
    img_of_item = ii.repeat_interleave(2)
    img_of_member = img_of_item.repeat_interleave(S)
    sign = torch.sign(grad)
    if shuffle_mode == "fixed":
        perms = torch.cat([shuffle_permutations(int(s), n, S) for s in item_seeds.tolist()])
        d = _permute(Rn.repeat_interleave(S, 0), perms) * sign[img_of_member]
        direction = _fixed_directions(d)
        active = active & _group_any((d != 0).flatten(1).any(1), torch.arange(G * S, device=dev) // S, G)
    else:
        d = None
        direction = _PerStepShuffles(Rn, sign, img_of_item, item_seeds, S)
    target_of = info.target[img_of_member]
    fwd = _Forward(model, x, info.target, img_of_member, direction, clip=clip, batch_size=batch_size)
    eps, cens, nfw, _ = _run_engine(mode, fwd, target_of, S, G, int(bound), active, block=block, info=info,
                                    img_of_member=img_of_member, d=d, on_pass=_bar_hook(bar))
    return {"eps": eps, "censored": cens, "n_forward": nfw}


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


# --------------------------------------------------------------------------- monotonicity


@torch.inference_mode()
def monotonicity_check(model, x, d, eps, target=None, *, image_index=None, horizon=64, bound=THESIS_BOUND,
                       clip=False, batch_size=None, block=16) -> dict:
    """Does the prediction flip back after its first change? A linear scan past ``eps``.

    ``eps`` (M,): each item's first changing step (``linear``'s answer).
    Scans steps ``eps + 1 .. min(eps + horizon, bound - 1)`` (``block`` per item
    per pass) and reports ``non_monotone`` (M,): some scanned step does *not*
    change the prediction; ``first_back`` (M,): the first such step (0 if
    none); ``n_forward`` (M,). Censored (``eps >= bound``) and undefined
    (``eps < 1``) items are skipped (False).
    """
    dev = x.device
    M = len(d)
    ii = _as_index(image_index, M, dev)
    eps = torch.as_tensor(eps, device=dev).long()
    if target is None:
        _, info = clean_pass(model, x, None, need_margin_grad=False, need_loss_grad=False, batch_size=batch_size)
        target = info.target
    target = torch.as_tensor(target, device=dev).long()
    stop = torch.clamp(eps + int(horizon), max=int(bound) - 1)
    nxt = eps + 1
    live = (eps >= 1) & (eps < bound) & (nxt <= stop)
    back = torch.zeros(M, dtype=torch.long, device=dev)
    nfw = torch.zeros(M, dtype=torch.long, device=dev)
    fwd = _Forward(model, x, target, ii, _fixed_directions(d), clip=clip, batch_size=batch_size)
    ks = torch.arange(int(block), device=dev)
    while bool(live.any()):
        mi = live.nonzero().squeeze(1)
        steps = nxt[mi][:, None] + ks
        valid = steps <= stop[mi][:, None]
        mem = mi[:, None].expand_as(steps)
        pred, _ = fwd(mem[valid], steps[valid])
        unchanged = torch.zeros(valid.shape, dtype=torch.bool, device=dev)
        unchanged[valid] = pred == target[ii[mem[valid]]]
        nfw.index_add_(0, mi, valid.sum(1))
        hit = unchanged.any(1)
        back[mi] = torch.where(hit, steps.gather(1, unchanged.float().argmax(1, keepdim=True)).squeeze(1), back[mi])
        nxt[mi] = nxt[mi] + int(block)
        live[mi] = ~hit & (nxt[mi] <= stop[mi])
    return {"non_monotone": (back > 0).cpu(), "first_back": back.cpu(), "n_forward": nfw.cpu()}
