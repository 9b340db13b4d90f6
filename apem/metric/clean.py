"""The clean pass: one forward and up to two backward passes per image.

``g = d CrossEntropy(model(x), target) / d x``, per image, in the model's input
space ([0, 1] pixels for apem models), is the loss gradient every part of APEM
starts from (its sign gives the directions); the target is the model's own
prediction unless given, as in the thesis. The same pass gives ``bisect`` its
clean margins and, optionally, the exact margin gradient.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from apem.metric.forward import resolve_batch_size
from apem.metric.margin import MarginInfo, changed, margin


def loss_gradient(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor | None = None):
    """Return ``(grad, logits, target)`` for a batch.

    The loss is summed over the batch, so each image's gradient is that of its
    own cross-entropy (images do not interact in an ``eval()`` model).
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        if target is None:
            target = logits.argmax(1)
        target = torch.as_tensor(target, device=logits.device).long()
        loss = F.cross_entropy(logits, target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad.detach(), logits.detach(), target


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
    :func:`apem.metric.clean.loss_gradient`: cross-entropy summed over the batch) or
    None, the MarginInfo carries :math:`\nabla_x m` when asked.
    """
    grads, mgrads, logits_all, targets = [], [], [], []
    batch_size = resolve_batch_size(batch_size, x.device, model=model, shape=tuple(x.shape[1:]),
                                    kind="backward" if need_margin_grad or need_loss_grad else "forward")
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


def clean_pass_used(model, x, image_index, target, *, need_margin_grad, need_loss_grad, batch_size):
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
        g2, info2, n_fwd = clean_pass_used(model, x, image_index, t_in, need_margin_grad=want_mgrad,
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
