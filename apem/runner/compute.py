"""One chunk's computation: images -> maps -> epsilons, as cells (the runner's leaf: it imports no runner module
but the keys).

:func:`compute_chunk` takes a chunk's images and its :class:`Work` (which cells of which
method and stage are missing, and the stored maps its searches can read instead of
recomputing them) and returns the new cells, one :class:`CellBatch` per (kind, method).
It is the same function in this process and on a Ray worker.

Every random draw is seeded by what it belongs to, never by the chunk or a position:
SmoothGrad's noise by the method's seed and the image's name (:func:`method_for`), the
shuffled baseline by ``seed_of(cfg.seed, image_id, method, stage)``. The searches run on
the maps as stored (8-bit or float16), so a search computed later from stored maps
gets the numbers of one computed with its maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from apem.profile import step
from apem.seeds import seed_of

SEARCH_COLUMNS = ("eps_minus", "eps_plus", "censored_minus", "censored_plus", "undefined_minus", "undefined_plus",
                  "reason_minus", "reason_plus", "n_forward_minus", "n_forward_plus", "n_forward")
SHUFFLE_COLUMNS = ("eps_shuffle_minus", "eps_shuffle_plus", "censored_shuffle_minus", "censored_shuffle_plus",
                   "n_forward_shuffle_minus", "n_forward_shuffle_plus")


class TargetMismatch(RuntimeError):
    """The model's prediction in the gradient pass is not the stored target."""


def check_targets(logits: torch.Tensor, target: torch.Tensor, image_ids) -> None:
    """Fail loudly when the gradient pass predicts another class than the stored prediction.

    The search measures how far the perturbation must go to change the prediction
    *from the target*; if the clean image already predicts something else, every
    step "changes" it, both epsilons come out 1 and APEM 0 -- a silent, wrong row.
    A mismatch means the prediction cache was computed under other numerics (device,
    threads, batch size) on an image whose top two logits nearly tie.
    """
    pred = logits.argmax(1)
    bad = (pred != target).nonzero().flatten().tolist()
    if bad:
        ids = list(image_ids)
        where = ", ".join(f"{ids[i]} (stored {int(target[i])}, now {int(pred[i])})" for i in bad[:5])
        raise TargetMismatch(
            f"the model's prediction in the gradient pass differs from the stored target on {len(bad)} image(s): "
            f"{where}. The prediction cache was computed under other numerics; delete results/_predictions "
            "or run with the same device and --threads.")


def method_for(cfg, name: str, image_ids, lm=None):
    """Method ``name`` of ``cfg``, configured for the images ``image_ids`` (in the batch's order).

    Its random draws are seeded per image: SmoothGrad's seed is ``seed_of(cfg.seed, name)``
    (unless the configuration sets one) and image ``i``'s noise key ``seed_of(image_ids[i])``,
    so an image's map is the same in any chunk, order or configuration.
    """
    from apem import explain

    defaults = explain.method_params(name)
    p = dict(cfg.methods[name])
    if "seed" in defaults and "seed" not in p:
        p["seed"] = seed_of(cfg.seed, name)
    if "noise_keys" in defaults and "noise_keys" not in p:
        p["noise_keys"] = [seed_of(str(iid)) for iid in image_ids]
    if "batch_size" in defaults and "batch_size" not in p:
        p["batch_size"] = cfg.method_batch(lm.device, lm.model) if lm is not None else cfg.method_batch("cpu")
    if name == "gradcam" and p.get("layer") in (None, "") and lm is not None:
        p["layer"] = lm.gradcam_layer  # the model's last convolutional feature map, after its activation
    return explain.get_method(name, **p)


#: The gradient method with its default objective ("loss") is the loss gradient the chunk has
#: just computed (same function, images and targets: bit-identical, tested); reuse it instead of a
#: second forward and backward pass. False recomputes it (``benchmarks/bench_pipeline.py --compare``).
SHARE_LOSS_GRADIENT = True


def shared_loss_gradient(method, grad: torch.Tensor):
    """``grad`` when ``method`` is the plain loss gradient at the chunk's targets, else None."""
    from apem.explain.base import check_finite

    if method.name != "gradient" or method.params.get("objective") != "loss":
        return None
    check_finite(method.name, grad)
    return grad


def image_by_image(fn, *tensors):
    """``fn`` on each image alone (batches of one), its outputs concatenated: a tensor or a tuple of tensors.

    The runner computes every per-image step this way (the loss gradient, the attributions,
    the stage maps): a model's output changes in its last bits with the batch size, so an
    image's map would otherwise depend on how many images shared its chunk
    (:class:`apem.metric.forward.Forward` keeps the searches' batch size fixed instead).
    On the 2-core CPU the loss gradient costs 10% more per image than in batches of four.
    """
    outs = [fn(*(t[j : j + 1] for t in tensors)) for j in range(len(tensors[0]))]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def attributions(cfg, lm, name: str, x: torch.Tensor, target: torch.Tensor, image_ids, grad=None) -> torch.Tensor:
    """Method ``name``'s attributions of the images ``x`` (the runner's: image by image, seeded per image).

    ``grad``: the images' loss gradients when already computed (the gradient method with the
    loss objective is that gradient, bit for bit). Chapters that recompute a stored map call this.
    """
    ids = [str(i) for i in image_ids]
    if grad is not None and SHARE_LOSS_GRADIENT:
        shared = shared_loss_gradient(method_for(cfg, name, ids[:1], lm), grad)
        if shared is not None:
            return shared
    return torch.cat([method_for(cfg, name, [ids[j]], lm)(lm.model, x[j : j + 1], target[j : j + 1])
                      for j in range(len(x))])


@dataclass
class Work:
    """What a chunk computes, per method: stage maps, searches, shuffled searches (stages each).

    ``stored``: ``(method, stage) -> array`` (storage form, the chunk's images in order) of
    stored maps that searches need and no map computation here provides.
    """

    maps: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    shuffle: dict = field(default_factory=dict)
    stored: dict = field(default_factory=dict)

    def signature(self) -> tuple:
        return tuple((kind, tuple(sorted((m, tuple(s)) for m, s in getattr(self, kind).items())))
                     for kind in ("maps", "search", "shuffle"))


@dataclass
class CellBatch:
    """New cells of one (kind, method): one row per (image, stage); ``arrays`` for maps."""

    kind: str
    method: str
    rows: pd.DataFrame
    arrays: dict | None = None


def compute_chunk(cfg, lm, x: torch.Tensor, part: pd.DataFrame, work: Work) -> list[CellBatch]:
    """The missing cells of one chunk of images (``part``: their rows of ``images.parquet``)."""
    from apem import maps
    from apem import metric
    from apem.maps import from_storage, to_storage
    from apem.metric.clean import loss_gradient

    dev = lm.device
    x = x.to(dev)
    if dev.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.tensor(part.pred.to_numpy().copy(), device=dev).long()
    ids = [str(i) for i in part.image_id]
    keys = list(part.image_key)
    n = len(part)
    with step("loss gradient", n):
        grad, logits = image_by_image(lambda xj, tj: loss_gradient(lm.model, xj, tj)[:2], x, target)
    check_targets(logits, target, ids)
    # the clean logits of that pass give bisect its per-image margins: no second clean forward
    info = metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
    out: list[CellBatch] = []
    searched: dict[tuple[str, int], np.ndarray] = {}  # (method, stage) -> the maps the searches read
    for name in cfg.methods:
        make = tuple(work.maps.get(name, ()))
        need = sorted(set(work.search.get(name, ())) | set(work.shuffle.get(name, ())))
        fresh = sorted(set(make) | {s for s in need if (name, s) not in work.stored}) if make or need else []
        if fresh:
            with step(f"method {name}", n):
                A = attributions(cfg, lm, name, x, target, ids, grad)
            with step("stage maps", n):
                stage = image_by_image(lambda aj, xj: tuple(maps.stage_maps(aj, xj, tuple(fresh), quantize=cfg.quantize,
                                                                            encoding=cfg.map_encoding)[s] for s in fresh),
                                       A, x)
            arrays = {s: to_storage(m.detach().cpu(), cfg.quantize) for s, m in zip(fresh, stage)}
            if make:
                rows = pd.DataFrame({"image_key": [k for _ in make for k in keys],
                                     "image_id": [i for _ in make for i in ids],
                                     "stage": [s for s in make for _ in range(n)],
                                     "row": [j for _ in make for j in range(n)]})
                out.append(CellBatch("maps", name, rows, {f"s{s}": arrays[s] for s in make}))
            searched.update({(name, s): arrays[s] for s in fresh})
        for s in need:
            if (name, s) not in searched:
                searched[(name, s)] = work.stored[(name, s)]
    for kind, spec in (("search", cfg.search().replace(shuffles=0)), ("shuffle", cfg.search())):
        todo = [(name, s) for name in cfg.methods for s in getattr(work, kind).get(name, ())]
        if not todo:
            continue
        blocks = []
        for name, s in todo:
            m = from_storage(searched[(name, s)]).to(dev)
            blocks.append(m.expand(-1, 3, -1, -1) if m.shape[1] == 1 else m)
        maps_all = torch.cat(blocks)  # (n * len(todo), 3, H, W), block-major
        seeds = torch.tensor([seed_of(cfg.seed, iid, name, s) for name, s in todo for iid in ids], dtype=torch.long)
        res = metric.evaluate_maps(lm.model, x, maps_all, target, spec=spec, image_index=torch.arange(n, device=dev).repeat(len(todo)),
                                   grad=grad, seeds=seeds, margin_info=info, plain=kind == "search")
        cols = SEARCH_COLUMNS if kind == "search" else SHUFFLE_COLUMNS
        for b, (name, s) in enumerate(todo):
            sl = slice(b * n, (b + 1) * n)
            rows = pd.DataFrame({"image_key": keys, "image_id": ids, "stage": s})
            for c in cols:
                rows[c] = res[c][sl].numpy()
            out.append(CellBatch(kind, name, rows))
    return _merge(out)


def _merge(batches: list[CellBatch]) -> list[CellBatch]:
    """One batch per (kind, method): a method's stages stacked."""
    merged: dict[tuple[str, str], CellBatch] = {}
    for b in batches:
        m = merged.get((b.kind, b.method))
        if m is None:
            merged[(b.kind, b.method)] = b
        else:
            m.rows = pd.concat([m.rows, b.rows], ignore_index=True)
            if b.arrays:
                m.arrays = {**(m.arrays or {}), **b.arrays}
    return list(merged.values())


def finish_rows(df: pd.DataFrame, search_bound: int) -> pd.DataFrame:
    """APEM per row (NaN when an epsilon is undefined) and a readable reason."""
    from apem.metric import REASONS, apem_norm_terms, apem_terms

    undefined = df.undefined_minus | df.undefined_plus
    df["apem"] = apem_terms(df.eps_plus, df.eps_minus, undefined)
    reasons = np.full(len(df), "", dtype=object)
    cens = (df.censored_minus | df.censored_plus).to_numpy() & ~undefined.to_numpy()
    reasons[cens] = f"censored: no change up to step {search_bound - 1}"
    for col, what in (("reason_plus", "irrelevance"), ("reason_minus", "relevance")):
        codes = df[col].to_numpy()
        for i in np.flatnonzero(codes):
            reasons[i] = f"{what} map undefined: {REASONS[codes[i]]}"
    df["reason"] = reasons
    if "eps_shuffle_minus" in df:
        df["apem_shuffle"] = apem_terms(df.eps_shuffle_plus, df.eps_shuffle_minus, undefined)
        df["apem_norm_term"] = apem_norm_terms(df.eps_plus, df.eps_minus, df.eps_shuffle_plus, df.eps_shuffle_minus,
                                               undefined)
    return df
