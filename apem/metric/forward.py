"""Forwarding perturbed images ``x + eps d`` in batches: batch sizes, memory layout, per-step shuffles."""

from __future__ import annotations

import weakref
from typing import Callable

import torch

from apem.metric.directions import keyed_permutations, permute
from apem.metric.margin import margin

#: Perturbed images per model call when ``batch_size`` is None, per device type. On the CPU the
#: forward pass is cache-bound: on a quiet 2-core machine EfficientNet-Lite0 forwards 23.6 ms per image
#: in batches of 2, 23.7 in batches of 4 and 29.5 one at a time at 2 threads (38.3, 41.9 and 41.4 ms at
#: 1 thread), and about 3x slower in batches of 32 (``benchmarks/bench_search.py --batch-sizes
#: 1,2,4,8,32``). 2 rather than 4 because every call is padded to the batch size (:class:`Forward`):
#: a search with one map left wastes one forward per pass, not three. Accelerators want large batches.
AUTO_BATCH = {"cpu": 2}
AUTO_BATCH_ACCELERATOR = 256

#: Images per call of the explanation methods (and the pool's classification) when ``batch_size``
#: is None. On the CPU a forward + backward pass of EfficientNet-Lite0 costs about twice as much
#: per image in batches of 32 as in batches of 4-16: glibc serves blocks above 32 MiB (its
#: largest mmap threshold, :mod:`apem.alloc`) with fresh pages at every pass, and a batch of 32
#: has such activations. ``benchmarks/bench_pipeline.py --compare`` measures it.
AUTO_METHOD_BATCH = {"cpu": 16}
AUTO_METHOD_BATCH_ACCELERATOR = 128


#: Share of the device's available memory (free + cached by torch's allocator) that an automatic batch
#: may plan for; the rest is headroom for the perturbed inputs, LRP's hooks and the allocator's rounding.
MEMORY_FRACTION = 0.5
#: Images in the probe batch whose peak memory gives the bytes per image (:func:`probe_bytes_per_image`).
PROBE_IMAGES = 8
#: The input of an apem model, (3, 224, 224) (:class:`apem.models.LoadedModel`): the probe's image shape
#: when the caller has no batch at hand (the methods' batch).
MODEL_INPUT = (3, 224, 224)
#: Kinds of work an automatic batch is sized for: an inference forward (the searches' perturbed images, the
#: pool's classification) or a forward and a backward pass to the input (the methods, the clean pass).
MEMORY_KINDS = ("forward", "backward")
_MEMORY_BATCH: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def available_memory(device) -> int:
    """Bytes this process can still allocate on CUDA ``device``: free memory plus what torch caches unused."""
    dev = torch.device(device)
    free, _ = torch.cuda.mem_get_info(dev)
    return int(free) + int(torch.cuda.memory_reserved(dev)) - int(torch.cuda.memory_allocated(dev))


def probe_bytes_per_image(model, device, kind: str, shape, dtype=None, n: int = PROBE_IMAGES) -> int:
    """Peak CUDA memory per image of one forward (``kind="forward"``) or forward + backward of ``n`` images.

    The peak over the memory held before the probe, divided by ``n`` (so fixed costs such as cuDNN's
    workspace count per image: an overestimate, on the safe side). Resets the device's peak statistics.
    """
    dev = torch.device(device)
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode(kind == "forward"):
        x = torch.rand((n, *shape), dtype=dtype, device=dev)
        if kind == "forward":
            model(x)
        else:
            x.requires_grad_(True)
            with torch.enable_grad():
                torch.autograd.grad(model(x).sum(), x)
    del x
    torch.cuda.synchronize(dev)
    return max(1, -(-(torch.cuda.max_memory_allocated(dev) - base) // n))


def memory_capped(default: int, available: int, per_image: int, fraction: float = None) -> int:
    """``min(default, floor(fraction * available / per_image))``, at least 1 (``fraction``: :data:`MEMORY_FRACTION`)."""
    fraction = MEMORY_FRACTION if fraction is None else fraction
    return max(1, min(int(default), int(fraction * available) // max(1, int(per_image))))


def memory_batch(default: int, model, device, kind: str = "forward", shape=MODEL_INPUT) -> int:
    """``default`` capped by the memory of CUDA ``device`` for ``model`` (unchanged on any other device).

    Measured once per (model, device, kind, image shape, default) and cached: the same process keeps the
    same batch. On a large card the cap does not bind (EfficientNet-Lite0 and VGG-16 fit 256 perturbed
    images many times over); on a small one it replaces an out-of-memory error by smaller batches.
    """
    dev = torch.device(device)
    if dev.type != "cuda" or model is None:
        return int(default)
    if kind not in MEMORY_KINDS:
        raise ValueError(f"kind must be one of {MEMORY_KINDS}, got {kind!r}")
    model = getattr(model, "model", model)  # a LoadedModel or the module itself
    key = (str(dev), kind, tuple(int(v) for v in shape), int(default))
    cache = _MEMORY_BATCH.setdefault(model, {})
    if key not in cache:
        cache[key] = memory_capped(default, available_memory(dev), probe_bytes_per_image(model, dev, kind, key[2]))
    return cache[key]


def resolve_batch_size(batch_size, device, *, model=None, shape=None, kind="forward") -> int:
    """``batch_size`` as a positive int; None picks :data:`AUTO_BATCH` for ``device``'s type.

    With ``model`` (and the image ``shape``, default :data:`MODEL_INPUT`) the automatic batch is also
    capped by the CUDA device's memory (:func:`memory_batch`); an explicit ``batch_size`` is kept as given.
    """
    if batch_size is None:
        kind_dev = torch.device(device).type
        b = AUTO_BATCH.get(kind_dev, AUTO_BATCH_ACCELERATOR)
        return memory_batch(b, model, device, kind, MODEL_INPUT if shape is None else shape)
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be >= 1 (or None for the device's default), got {batch_size}")
    return b


def resolve_method_batch(batch_size, device, *, model=None, shape=None) -> int:
    """The explanation methods' ``batch_size``: None picks :data:`AUTO_METHOD_BATCH` for ``device``'s type.

    With ``model``, capped on CUDA by the memory of a forward + backward pass (:func:`memory_batch`).
    """
    if batch_size is None:
        b = AUTO_METHOD_BATCH.get(torch.device(device).type, AUTO_METHOD_BATCH_ACCELERATOR)
        return memory_batch(b, model, device, "backward", MODEL_INPUT if shape is None else shape)
    return resolve_batch_size(batch_size, device)


#: Directions (one (3, H, W) tensor per map side or shuffled member) a search holds at once on the CPU: what
#: :func:`apem.metric.evaluate.evaluate_maps` searches together in the same passes when not told.
MAX_DIRECTIONS = {"cpu": 256}
#: The most an accelerator holds at once, whatever its memory (16,384 directions of (3, 224, 224) in float32
#: are 9.9 GB, and 5x that at the peak, :data:`DIRECTION_PEAK`).
MAX_DIRECTIONS_ACCELERATOR = 16384
#: Peak bytes per direction element while directions are made, in units of the element's size: the
#: direction itself, the repeated map it is drawn from, its product with the gradient's sign, and a fixed
#: shuffle's permutation index (int64: twice a float32).
DIRECTION_PEAK = 5


def direction_budget(device, shape=MODEL_INPUT, dtype=torch.float32) -> int:
    """How many directions of ``shape`` a search holds at once on ``device`` (:data:`MAX_DIRECTIONS` on the CPU).

    On CUDA: :data:`MEMORY_FRACTION` of the available memory over the peak bytes of one direction
    (:data:`DIRECTION_PEAK`), at most :data:`MAX_DIRECTIONS_ACCELERATOR`. The searches of more maps than
    that run one group after the other; an item's epsilon is the same either way (:class:`Forward`).
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return MAX_DIRECTIONS.get(dev.type, MAX_DIRECTIONS["cpu"])
    numel = 1
    for v in shape:
        numel *= int(v)
    per = DIRECTION_PEAK * numel * torch.empty(0, dtype=dtype).element_size()
    return memory_capped(MAX_DIRECTIONS_ACCELERATOR, available_memory(dev), per)


def wants_channels_last(model) -> bool:
    """True when ``model``'s convolution weights are channels-last (as :mod:`apem.models` sets them on the CPU):
    its inputs are then converted to channels-last too."""
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

    Every model call has exactly ``batch_size`` images: a last, partial batch is padded
    with copies of its first image (their outputs dropped; ``images`` counts only the
    requested ones). A model's output for an image changes in its last bits with the batch
    *size* (the CPU kernels block differently), never with the other images of a batch of
    the same size, so a pair's prediction and margin depend on the pair alone, not on which
    other maps share the search: what lets the results store reuse an epsilon computed in
    another chunk or configuration (:mod:`apem.runner.keys`).
    """

    def __init__(self, model, x, target, img_of, direction, *, clip=False, batch_size=None, record=None):
        self.model, self.x, self.target, self.img_of = model, x, target, img_of
        self.batch_size = resolve_batch_size(batch_size, x.device, model=model, shape=tuple(x.shape[1:]))
        self.direction, self.clip, self.record = direction, clip, record
        self.channels_last = wants_channels_last(model) and x.dim() == 4
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
            k = len(p)
            if k < self.batch_size:  # the same batch size for every call (see the class's docstring)
                p = torch.cat([p, p[:1].expand(self.batch_size - k, *p.shape[1:])])
            if self.channels_last:
                p = p.contiguous(memory_format=torch.channels_last)
            z = self.model(p)[:k]
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
    """The direction source of fixed directions ``d`` (one per item): ``(members, steps) -> d[members]``."""
    return lambda members, steps: d[members]


#: Where :class:`PerStepShuffles` draws its permutations when not told (``draw_on=None``): None picks
#: ``"host"`` for CPU tensors and ``"device"`` otherwise; tests set ``"device"`` to run the accelerator's
#: code path on the CPU.
DRAW_ON = None
DRAW_PLACES = ("host", "device")


def occurrence(index: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same value (0 for a value's first row).

    Computed on ``index``'s device without a host synchronisation (a stable sort and a search).
    """
    order = torch.argsort(index, stable=True)
    s = index[order]
    rank = torch.empty_like(index)
    rank[order] = torch.arange(len(index), device=index.device) - torch.searchsorted(s, s)
    return rank


class PerStepShuffles:
    """Directions drawn afresh at every tested step: ``permute(Rn) * sign(g)``.

    Member ``m = item * S + s`` is shuffle ``s`` of ``item``; every requested
    (member, step) pair draws one new permutation for its item, in request
    order (the engines request (item, step, shuffle) in that order), so an
    item's draws depend only on its seed and its own sequence of tested steps,
    never on the batch size or on which other items share the batch.

    ``draw_on="host"`` (the default for CPU tensors): each item owns a CPU
    ``torch.Generator`` seeded with its seed, and its k-th request gets the k-th
    ``torch.randperm`` of that generator (copied to the tensors' device).
    ``draw_on="device"`` (the default on an accelerator, :data:`DRAW_ON`): the
    k-th request of an item gets :func:`~apem.metric.directions.keyed_permutations`
    ``(seed, k)``, computed on the device for the whole batch, with no host
    synchronisation, CPU ``randperm`` or host-to-device copy of permutations.
    The two draw different (equally distributed) permutations: per-step shuffled
    epsilons of a GPU run differ from a CPU run's with the same seeds, as two
    seeds' would (the store records the device of every chunk,
    :class:`apem.numerics.NumericEnv`). Fixed shuffles are drawn on the host either way.
    """

    def __init__(self, Rn, sign_g, img_of_item, seeds, shuffles, *, draw_on=None):
        self.Rn, self.sign, self.img_of_item, self.S = Rn, sign_g, img_of_item, shuffles
        self.n = Rn[0].numel()
        draw_on = draw_on or DRAW_ON or ("host" if Rn.device.type == "cpu" else "device")
        if draw_on not in DRAW_PLACES:
            raise ValueError(f"draw_on must be one of {DRAW_PLACES}, got {draw_on!r}")
        self.draw_on = draw_on
        if draw_on == "host":
            self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds.tolist()]
        else:
            self.seeds = torch.as_tensor(seeds).to(device=Rn.device, dtype=torch.long)
            self.drawn = torch.zeros(len(self.seeds), dtype=torch.long, device=Rn.device)

    def permutations(self, it: torch.Tensor) -> torch.Tensor:
        """The next permutation of each requested item ``it`` (rows in request order)."""
        if self.draw_on == "host":
            return torch.stack([torch.randperm(self.n, generator=self.gens[i]) for i in it.tolist()])
        draw = self.drawn[it] + occurrence(it)
        self.drawn.index_add_(0, it, torch.ones_like(it))
        return keyed_permutations(self.seeds[it], draw, self.n)

    def __call__(self, members, steps):
        it = members // self.S
        return permute(self.Rn[it], self.permutations(it)) * self.sign[self.img_of_item[it]]


def group_any(flags: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per group, whether any of its members' ``flags`` is set (``groups`` gives each member's group)."""
    out = torch.zeros(n_groups, dtype=torch.long, device=flags.device)
    return out.scatter_add_(0, groups, flags.long()) > 0

