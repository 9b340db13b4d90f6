"""How often does the prediction flip back after its first change? (a check on real images)."""

from __future__ import annotations

import torch

from apem.metric.clean import clean_pass
from apem.metric.forward import fixed_directions, Forward
from apem.metric.search import as_index
from apem.metric.spec import SearchSpec
from apem.numerics import no_tf32


@torch.inference_mode()
@no_tf32()
def monotonicity_check(model, x, d, eps, target=None, *, spec: SearchSpec | None = None, image_index=None, horizon=64,
                       block=16, **settings) -> dict:
    """Does the prediction flip back after its first change? A linear scan past ``eps``.

    ``eps`` (M,): each item's first changing step (``linear``'s answer).
    Scans steps ``eps + 1 .. min(eps + horizon, bound - 1)`` (``block`` per item
    per pass) and reports ``non_monotone`` (M,): some scanned step does *not*
    change the prediction; ``first_back`` (M,): the first such step (0 if
    none); ``n_forward`` (M,). ``spec`` gives the bound, clipping and batch size
    (``block`` here is the scan width). Censored (``eps >= bound``) and undefined
    (``eps < 1``) items are skipped (False).
    """
    spec = SearchSpec.build(spec, **settings)
    bound, clip, batch_size = spec.bound, spec.clip, spec.batch_size
    dev = x.device
    M = len(d)
    ii = as_index(image_index, M, dev)
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
    fwd = Forward(model, x, target, ii, fixed_directions(d), clip=clip, batch_size=batch_size)
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
