"""The public search: the smallest integer step that changes the prediction, for given directions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apem.metric.clean import clean_pass_used, clean_pass
from apem.metric.directions import REASON_CALLER, REASON_NONFINITE, REASON_ZERO_DIRECTION, REASONS
from apem.metric.engines import ENGINES
from apem.metric.forward import fixed_directions, Forward
from apem.metric.margin import MarginInfo
from apem.metric.spec import SearchSpec
from apem.numerics import no_tf32



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
        """The same result with every tensor on the CPU."""
        return SearchResult(self.eps.cpu(), self.censored.cpu(), self.undefined.cpu(), self.n_forward.cpu(),
                            None if self.reason is None else self.reason.cpu(), self.n_passes)


def as_index(image_index, n, dev):
    """``image_index`` as a long tensor on ``dev``; None means one image per item, ``arange(n)``."""
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
    _, info, n = clean_pass_used(model, x, ii, target, need_margin_grad=mode == "bisect", need_loss_grad=False,
                                  batch_size=batch_size)
    return info, n


def run_engine(mode, fwd, target_of, S, G, bound, active, **kw):
    """The engine of ``mode`` (:data:`~apem.metric.engines.ENGINES`): ``(eps, censored, n_forward, passes)`` per group."""
    kw["block"] = int(kw.get("block", 32))
    return ENGINES[mode](fwd, target_of, S, G, bound, active, **kw)


@no_tf32()
def search(model, x, d, target=None, *, spec: SearchSpec | None = None, image_index=None, defined=None,
           margin_info=None, hint=None, reason=None, _record=None, _on_pass=None, **settings) -> SearchResult:
    r"""The smallest integer step :math:`\epsilon \in [1, bound)` with ``argmax f(x + eps d) != target``.

    ``x`` (B, 3, H, W) images; ``d`` (M, 3, H, W) directions (see
    :func:`directions`); ``image_index`` (M,) the image of each direction
    (default ``arange(M)``, B = M); ``target`` (B,) per image, default the
    model's prediction. ``defined`` (M,) False marks items without a direction
    (default: ``d`` non-zero and finite). ``margin_info``: the per-image
    :class:`MarginInfo` (computed here when None). ``hint`` (M,) an expected
    ``eps`` per item (``bisect`` tests ``hint - 1, hint`` first; 0 = none).
    ``spec``: the :class:`~apem.metric.spec.SearchSpec` (mode, bound, clip,
    batch size, block; keyword ``settings`` such as ``mode="linear"`` are
    applied on top). See the package docstring for the modes; the result is
    on ``x``'s device.
    """
    spec = SearchSpec.build(spec, **settings)
    mode, bound, clip, batch_size, block = spec.mode, spec.bound, spec.clip, spec.batch_size, spec.block
    dev = x.device
    M = len(d)
    ii = as_index(image_index, M, dev)
    finite = torch.isfinite(d).flatten(1).all(1) if M else torch.zeros(0, dtype=torch.bool, device=dev)
    auto = finite & (d != 0).flatten(1).any(1) if M else finite
    # reason codes with torch.where, not boolean-mask writes (each one a host synchronisation on an accelerator)
    code = lambda r, mask, c: torch.where(mask, torch.full_like(r, c), r)  # noqa: E731
    if reason is None:
        reason = torch.zeros(M, dtype=torch.long, device=dev)
        reason = code(reason, ~finite, REASON_NONFINITE)
        reason = code(reason, finite & ~auto, REASON_ZERO_DIRECTION)
    reason = reason.to(dev).clone()
    if defined is not None:
        defined = torch.as_tensor(defined, device=dev).bool()
        reason = code(reason, ~defined & (reason == 0), REASON_CALLER)
        active = defined & auto
    else:
        active = auto
    reason = code(reason, ~active & (reason == 0), REASON_ZERO_DIRECTION)
    reason = code(reason, active, 0)
    if M == 0:
        z = torch.zeros(0, dtype=torch.long, device=dev)
        return SearchResult(z, z.bool(), z.bool(), z, z, 0)
    info, _ = _image_info(model, x, target, mode, margin_info, batch_size, ii)
    target_of = info.target[ii]
    fwd = Forward(model, x, info.target, ii, fixed_directions(d), clip=clip, batch_size=batch_size, record=_record)
    hint_t = None if hint is None else torch.as_tensor(hint, device=dev).long()
    eps, cens, nfw, passes = run_engine(mode, fwd, target_of, 1, M, int(bound), active, block=block, info=info,
                                         img_of_member=ii, d=d, hint=hint_t, on_pass=_on_pass)
    return SearchResult(eps, cens, ~active, nfw, reason, passes)


@no_tf32()
def trace(model, x, d, target=None, *, spec: SearchSpec | None = None, margin_info=None, **settings) -> list[dict]:
    """Every tested step of ONE item, in the order tested.

    ``x`` (3, H, W) or (1, 3, H, W), ``d`` likewise. Returns a list of
    ``dict(eps, pred, margin, changed, pass_)`` (``pass_``: the lockstep round
    that tested it); the last entry also holds ``result``: the item's
    ``eps``, ``censored``, ``undefined`` and ``n_forward``: those of :func:`search` with the same
    ``spec`` (the same padded batch size), bit for bit.
    """
    spec = SearchSpec.build(spec, **settings)
    mode = spec.mode
    x = x if x.dim() == 4 else x[None]
    d = d if d.dim() == 4 else d[None]
    info, _ = _image_info(model, x, target, mode, margin_info, 64)
    if not info.has_slope and mode == "bisect":
        _, info = clean_pass(model, x, info.target, need_loss_grad=False)
    t = int(info.target[0])
    rec: list = []
    # the search's own batch size (padded calls): the trace's result is the search's, bit for bit
    res = search(model, x, d, info.target, spec=spec, margin_info=info, _record=rec)
    out = [dict(eps=int(e), pred=int(p), margin=float(m), changed=int(p) != t, pass_=k)
           for k, (_, eb, pb, mg) in enumerate(rec) for e, p, m in zip(eb.tolist(), pb.tolist(), mg.tolist())]
    if out:
        out[-1]["result"] = dict(eps=int(res.eps[0]), censored=bool(res.censored[0]),
                                 undefined=bool(res.undefined[0]), n_forward=int(res.n_forward[0]))
    return out
