"""Forwarding perturbed images ``x + eps d`` in batches: batch sizes, memory layout, per-step shuffles."""

from __future__ import annotations

from typing import Callable

import torch

from apem.metric.directions import permute
from apem.metric.margin import margin

#: Perturbed images per model call when ``batch_size`` is None, per device type. On the CPU the
#: forward pass is cache-bound: on 2 cores EfficientNet-Lite0 forwards about 1.5-2x more images per
#: second in batches of 2-4 than one at a time, and about 3x more than in batches of 32
#: (``benchmarks/bench_search.py --batch-sizes 1,2,4,8,32``); accelerators want large batches.
AUTO_BATCH = {"cpu": 4}
AUTO_BATCH_ACCELERATOR = 256

#: Images per call of the explanation methods (and the pool's classification) when ``batch_size``
#: is None. On the CPU a forward + backward pass of EfficientNet-Lite0 costs about twice as much
#: per image in batches of 32 as in batches of 4-16: glibc serves blocks above 32 MiB (its
#: largest mmap threshold, :mod:`apem.alloc`) with fresh pages at every pass, and a batch of 32
#: has such activations. ``benchmarks/bench_pipeline.py --compare`` measures it.
AUTO_METHOD_BATCH = {"cpu": 16}
AUTO_METHOD_BATCH_ACCELERATOR = 128


def resolve_batch_size(batch_size, device) -> int:
    """``batch_size`` as a positive int; None picks :data:`AUTO_BATCH` for ``device``'s type."""
    if batch_size is None:
        kind = torch.device(device).type
        return AUTO_BATCH.get(kind, AUTO_BATCH_ACCELERATOR)
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be >= 1 (or None for the device's default), got {batch_size}")
    return b


def resolve_method_batch(batch_size, device) -> int:
    """The explanation methods' ``batch_size``: None picks :data:`AUTO_METHOD_BATCH` for ``device``'s type."""
    if batch_size is None:
        return AUTO_METHOD_BATCH.get(torch.device(device).type, AUTO_METHOD_BATCH_ACCELERATOR)
    return resolve_batch_size(batch_size, device)


def _wants_channels_last(model) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


class Forward:
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


def fixed_directions(d: torch.Tensor) -> Callable:
    return lambda members, steps: d[members]


class PerStepShuffles:
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
        return permute(self.Rn[it], perms) * self.sign[self.img_of_item[it]]


def group_any(flags: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    out = torch.zeros(n_groups, dtype=torch.long, device=flags.device)
    return out.scatter_add_(0, groups, flags.long()) > 0

