"""The experiment runner: images -> maps -> epsilons, once per configuration.

``results(cfg)`` is the call every chapter makes: it runs what is missing
(resuming a killed run chunk by chunk) or reuses what the store holds, and
returns a :class:`Results` with the tidy table, the selected images, and the
cached maps.

Pipeline for one configuration:

1. classify the image pool once (cached per model/preset/data, shared by
   every configuration that uses them);
2. draw ``n_correct`` correctly classified and ``n_misclassified``
   misclassified images at random (seeded; ``all`` takes every image of the
   group), with ground truth, prediction, confidence (top softmax
   probability) and cross-entropy loss against the ground truth;
3. per chunk of ``chunk_size`` images: loss gradient at the prediction, every
   method's attribution, every stage's map, and eps-minus / eps-plus (and the
   shuffled baseline) for all of the chunk's maps in one batched search;
   the chunk is written atomically;
4. the chunks' rows are gathered into ``results.parquet``.

Steps 1-2 live in :mod:`apem.selection`; step 3's loop (what is missing, who computes
it, storing each chunk) in :mod:`apem.chunks`, shared by the serial run and the run
on a Ray cluster (:mod:`apem.distributed`, ``ray=``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from apem import chunks
from apem.config import Config, load_config
from apem.maps import from_storage, to_storage
from apem.profile import step
from apem.seeds import seed_of
from apem.selection import classify_pool, prediction_cache, select_images  # noqa: F401 (apem.run's names too)
from apem.store import Store, StoreError

# ----------------------------------------------------------------------------- helpers


def _load(cfg: Config):
    from apem.data import load_image_set
    from apem.models import load_model

    lm = load_model(cfg.model, cfg.preset, None if cfg.weights == "none" else cfg.weights, cfg.device)
    images = load_image_set(cfg.data, cfg.ground_truth)
    if cfg.pool:
        images = images.subset(range(min(cfg.pool, len(images))))
    return lm, images


# ----------------------------------------------------------------------------- one chunk


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


def _method_call(name: str, params: dict, cfg: Config, chunk: int, lm=None):
    from apem import explain

    defaults = explain.method_params(name)
    p = dict(params)
    if "seed" in defaults and "seed" not in p:
        p["seed"] = seed_of(cfg.seed, name, "chunk", chunk)
    if "batch_size" in defaults and "batch_size" not in p:
        p["batch_size"] = cfg.method_batch(lm.device, lm.model) if lm is not None else cfg.method_batch("cpu")
    if name == "gradcam" and p.get("layer") in (None, "") and lm is not None:
        p["layer"] = lm.gradcam_layer  # the model's last convolutional feature map, after its activation
    return explain.get_method(name, **p)


#: The gradient method with its default objective ("loss") is the loss gradient the chunk has
#: just computed (same function, images and targets: bit-identical, tested); reuse it instead of a
#: second forward and backward pass. False recomputes it (``benchmarks/bench_pipeline.py --compare``).
SHARE_LOSS_GRADIENT = True


def _shared_loss_gradient(method, grad: torch.Tensor):
    """``grad`` when ``method`` is the plain loss gradient at the chunk's targets, else None."""
    from apem.explain.base import check_finite

    if method.name != "gradient" or method.params.get("objective") != "loss":
        return None
    check_finite(method.name, grad)
    return grad


def compute_chunk(cfg: Config, lm, x: torch.Tensor, sel: pd.DataFrame, chunk: int):
    """Maps and epsilons for one chunk of images: (rows DataFrame, maps arrays)."""
    from apem import maps
    from apem import metric
    from apem.metric.clean import loss_gradient

    dev = lm.device
    x = x.to(dev)
    if lm.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.tensor(sel.pred.to_numpy().copy(), device=dev).long()
    with step("loss gradient", len(x)):
        grad, logits, _ = loss_gradient(lm.model, x, target)
    check_targets(logits, target, sel.image_id)
    # the clean logits of that pass give bisect its per-image margins: no second clean forward
    info = metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
    n = len(sel)
    blocks, keys = [], []
    for name, params in cfg.methods.items():
        with step(f"method {name}", len(x)):
            method = _method_call(name, params, cfg, chunk, lm)
            A = _shared_loss_gradient(method, grad) if SHARE_LOSS_GRADIENT else None
            if A is None:
                A = method(lm.model, x, target)
        with step("stage maps", len(x)):
            stage = maps.stage_maps(A, x, cfg.stages, quantize=cfg.quantize, encoding=cfg.map_encoding)
        for s in cfg.stages:
            blocks.append(stage[s].expand(-1, 3, -1, -1) if stage[s].shape[1] == 1 else stage[s])
            keys.append((name, s, stage[s].detach().cpu()))
    maps_all = torch.cat(blocks)  # (n * methods * stages, 3, H, W), block-major
    image_index = torch.arange(n, device=dev).repeat(len(blocks))
    seeds = torch.tensor(
        [seed_of(cfg.seed, iid, name, s) for name, s, _ in keys for iid in sel.image_id], dtype=torch.long
    )
    out = metric.evaluate_maps(
        lm.model, x, maps_all, target, spec=cfg.search(), image_index=image_index, grad=grad, seeds=seeds,
        margin_info=info,
    )
    per_item = {k: v for k, v in out.items() if v.dim() == 1 and len(v) == len(maps_all)}
    rows = []
    arrays: dict[str, np.ndarray] = {}
    facts = sel.drop(columns=["set_position"]).to_dict("records")
    for b, (name, s, m) in enumerate(keys):
        arr_name = f"{name}__s{s}"
        arrays[arr_name] = to_storage(m, cfg.quantize)
        for j in range(n):
            k = b * n + j
            r = dict(facts[j])
            r.update(method=name, stage=s, chunk=chunk, map_array=arr_name, map_row=j)
            for key, v in per_item.items():
                r[key] = v[k].item()
            rows.append(r)
    df = pd.DataFrame(rows)
    return _finish_rows(df, cfg), arrays


def _finish_rows(df: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """APEM per row (NaN when an epsilon is undefined) and a readable reason."""
    from apem.metric import REASONS, apem_norm_terms, apem_terms

    undefined = df.undefined_minus | df.undefined_plus
    df["apem"] = apem_terms(df.eps_plus, df.eps_minus, undefined)
    reasons = np.full(len(df), "", dtype=object)
    cens = (df.censored_minus | df.censored_plus).to_numpy() & ~undefined.to_numpy()
    reasons[cens] = f"censored: no change up to step {cfg.search_bound - 1}"
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


# ----------------------------------------------------------------------------- the run


class _Interrupt(RuntimeError):
    """Raised by tests to stop a run after k chunks."""


def _chunk_starts(cfg: Config, n_images: int) -> list[int]:
    return chunks.starts(cfg.chunk_size, n_images)


def _needs_work(store: Store, cfg: Config) -> bool:
    """True unless every file the configuration needs is present and matches its checksum."""
    if not store.exists() or not store.has("images.parquet") or not store.has("results.parquet"):
        return True
    n_images = len(pd.read_parquet(store.dir / "images.parquet", columns=["image_id"]))
    if any(store.chunk_problem(c) is not None for c in range(len(_chunk_starts(cfg, n_images)))):
        return True
    return bool(cfg.filter_images) and not (store.has("filter.parquet") and store.has("filter_maps.npz"))


def run(cfg: Config, *, progress: bool = True, root: str | Path | None = None, threads: int | None = None,
        wait: bool = True, fail_after_chunks: int | None = None, ray: str | None = None,
        workers: int | None = None) -> Store:
    """Compute whatever the store of ``cfg`` lacks or holds damaged; return the store.

    ``threads``: torch's CPU thread count for the run (None: the store's recorded count,
    else ``$APEM_THREADS``, else :data:`apem.numerics.DEFAULT_THREADS`). The numeric
    environment is pinned for the run and recorded; resuming under another one raises
    :class:`apem.numerics.EnvironmentMismatch`. One run writes a store at a time
    (``wait``: wait for the other one, else raise :class:`apem.store.StoreError`).
    ``ray``: compute the chunks on a Ray cluster (``"local"``, ``"auto"``, ``HOST:PORT`` or
    ``ray://HOST:PORT``; :mod:`apem.distributed`) with at most ``workers`` workers; the same
    store, the same numbers. ``store.computed`` lists the chunks this call computed,
    ``store.chunk_workers`` who computed each.
    """
    from apem import distributed, numerics
    from apem.models import resolve_device

    ray = distributed.check_address(ray)  # a malformed address fails before anything is loaded
    store = Store(cfg, root)  # resolves the data folder: a bad one fails here, before anything is created
    store.computed, store.chunk_workers = [], {}
    recorded = store.environment() if store.exists() else None
    with numerics.pinned(numerics.resolve_threads(threads, recorded)):
        env = numerics.NumericEnv.current(resolve_device(cfg.device))
        if recorded is not None:
            numerics.check_compatible(recorded, env, str(store.dir))
        if not _needs_work(store, cfg):
            return store
        with distributed.connected(ray) if ray else contextlib.nullcontext():
            lm, images = _load(cfg)  # bad weights or images fail here, before anything is created
            with store.lock(wait=wait):
                try:
                    store.open()
                    recorded = store.environment()
                    if recorded is None:
                        store.set_environment(env)
                    else:
                        numerics.check_compatible(recorded, env, str(store.dir))
                    _compute(cfg, store, lm, images, env, progress, fail_after_chunks, ray=ray, workers=workers)
                except BaseException:
                    store.remove_if_empty()  # a run that failed before its first result leaves no folder
                    raise
    return store


def _compute(cfg: Config, store: Store, lm, images, env, progress: bool, fail_after_chunks: int | None,
             ray: str | None = None, workers: int | None = None) -> None:
    """The locked part of :func:`run`: missing or damaged chunks, the table, the filter."""
    from apem.alloc import tune_malloc

    tune_malloc()  # small-batch CPU forwards run up to ~1.8x faster with buffers kept on the heap (apem.alloc)
    sel = store.read_frame("images.parquet")
    if progress:  # what is left, timed on this machine, to stderr before anything is computed (apem.cost)
        from apem.cost import announce

        announce(cfg, store, lm, images)
    torch.manual_seed(cfg.seed)
    if sel is None:
        preds = classify_pool(cfg, lm, images, store.root, progress)
        sel = select_images(cfg, preds)
        store.write_frame("images.parquet", sel)
    n_chunks = len(_chunk_starts(cfg, len(sel)))
    todo = chunks.missing(cfg, store, sel)
    if todo:
        if ray:
            from apem import distributed

            source = distributed.compute(cfg, store, images, lm.transform, todo, env, workers, progress)
        else:
            source = chunks.serial(cfg, lm, images, todo)
        chunks.store_all(store, env, len(sel), todo, source, desc=f"APEM {cfg.name}", progress=progress,
                         fail_after_chunks=fail_after_chunks, interrupt=_Interrupt)
    if todo or store.trusted("results.parquet") is None:
        for c in range(n_chunks):
            if store.chunk_environment(c).key() != env.key():
                raise StoreError(f"chunk {store.chunk_path(c)} was computed under {store.chunk_environment(c).describe()},"
                                 f" not {env.describe()}: remove it or use a new store")
        table = pd.concat([store.read_rows(c) for c in range(n_chunks)], ignore_index=True)
        store.write_frame("results.parquet", table)
    else:
        table = store.read_frame("results.parquet")
    if cfg.filter_images and (todo or store.trusted("filter_maps.npz") is None or store.trusted("filter.parquet") is None):
        with step("filter", cfg.filter_images, absorb=True):
            run_filter(cfg, lm, images, store, table, progress)


def run_filter(cfg: Config, lm, images, store: Store, table: pd.DataFrame, progress: bool = True) -> None:
    """Thesis Algorithm 2 on the first ``filter_images`` correct images, every method and stage."""
    from apem import filtering, metric
    from apem.data import load_tensors
    from apem.metric.clean import loss_gradient

    sel = store.read_frame("images.parquet")
    pick = sel[sel.group == "correct"].head(cfg.filter_images).reset_index(drop=True)
    _, x, _ = load_tensors(images.subset(pick.set_position.to_numpy()), lm.transform)
    x = x.to(lm.device)
    target = torch.tensor(pick.pred.to_numpy().copy(), device=lm.device).long()
    grad, logits, _ = loss_gradient(lm.model, x, target)
    check_targets(logits, target, pick.image_id)
    info = metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
    res = Results(cfg, store)
    rows, arrays = [], {}
    for name in cfg.methods:
        for s in cfg.stages:
            m = torch.stack([res.map(iid, name, s) for iid in pick.image_id]).to(lm.device)
            t0 = time.perf_counter()
            fr = filtering.explanation_filter(
                lm.model, x, m, target, spec=cfg.search(), grad=grad, fast_k=cfg.filter_fast_k, margin_info=info,
            )
            dt = time.perf_counter() - t0
            arrays[f"{name}__s{s}"] = to_storage(fr.maps.detach().cpu(), cfg.quantize)
            for j, iid in enumerate(pick.image_id):
                rows.append(dict(
                    image_id=iid, method=name, stage=s, map_row=j,
                    apem_before=float(fr.apem_before[j]), apem_after=float(fr.apem_after[j]),
                    steps=int(fr.steps[j]), removed_fraction=float(fr.removed_fraction[j]),
                    seconds=dt / len(pick),
                ))
    store.write_arrays("filter_maps.npz", arrays)
    store.write_frame("filter.parquet", pd.DataFrame(rows))  # last: its presence says the filter is complete


# ----------------------------------------------------------------------------- reading


@dataclass
class Results:
    """What a chapter reads: the tidy table, the images, the cached maps."""

    cfg: Config
    store: Store

    @cached_property
    def table(self) -> pd.DataFrame:
        return self.store.read_frame("results.parquet")

    @cached_property
    def images(self) -> pd.DataFrame:
        return self.store.read_frame("images.parquet")

    @cached_property
    def filter_table(self) -> pd.DataFrame | None:
        return self.store.read_frame("filter.parquet")

    @cached_property
    def _loaded(self):
        return _load(self.cfg)

    @property
    def model(self):
        """The LoadedModel (loaded on first use)."""
        return self._loaded[0]

    def image_tensors(self, image_ids) -> torch.Tensor:
        """The preprocessed images (N, 3, H, W) in [0, 1]."""
        from apem.data import load_tensors

        lm, images = self._loaded
        pos = self.images.set_index("image_id").loc[list(image_ids), "set_position"].to_numpy()
        return load_tensors(images.subset(pos), lm.transform)[1]

    _map_cache: dict = None

    def _chunk_maps(self, chunk: int) -> dict:
        if self._map_cache is None:
            self._map_cache = {}
        if chunk not in self._map_cache:
            self._map_cache[chunk] = self.store.read_maps(chunk)
        return self._map_cache[chunk]

    def map(self, image_id: str, method: str, stage: int) -> torch.Tensor:
        """A cached stage map (C, H, W) in [0, 1]."""
        t = self.table
        r = t[(t.image_id == image_id) & (t.method == method) & (t.stage == stage)]
        if r.empty:
            raise KeyError(f"no map for image {image_id!r}, method {method!r}, stage {stage}")
        r = r.iloc[0]
        return from_storage(self._chunk_maps(int(r.chunk))[r.map_array][int(r.map_row)])

    def filtered_map(self, image_id: str, method: str, stage: int) -> torch.Tensor:
        ft = self.filter_table
        if ft is None:
            raise KeyError("this configuration ran no filter (filter_images = 0)")
        r = ft[(ft.image_id == image_id) & (ft.method == method) & (ft.stage == stage)].iloc[0]
        arrays = self.store.read_arrays("filter_maps.npz")
        return from_storage(arrays[f"{method}__s{stage}"][int(r.map_row)])


def results(params: str | Path | Config = "default", *, progress: bool = True, root=None, threads: int | None = None,
            ray: str | None = None, **overrides) -> Results:
    """Run or reuse the configuration ``params`` (+ overrides) and return its results.

    ``ray``: compute what is missing on a Ray cluster (see :func:`run`).

    The calling process is left in the store's numeric environment (its CPU thread count,
    TF32 off), so what a chapter computes from the results matches what the runner stored.
    """
    cfg = load_config(params, **overrides)
    store = run(cfg, progress=progress, root=root, threads=threads, ray=ray)
    # what the caller computes next from these results (a chapter's figures, a study) gets the numbers
    # the runner would: this process takes the store's thread count, and TF32 stays off
    from apem import numerics

    numerics.apply(store.threads())
    return Results(cfg, store)


def summary(table: pd.DataFrame, by=("method", "stage")) -> pd.DataFrame:
    """Mean and median APEM per method and stage (thesis Tables 4.2 and 4.4) over the defined rows.

    :func:`apem.metric.table_summary`, indexed by ``by``: every mean (APEM, eps-minus,
    eps-plus) leaves out the rows whose APEM is undefined, as :func:`apem.metric.apem` does.
    """
    from apem.metric import table_summary

    by = [by] if isinstance(by, str) else list(by)
    return table_summary(table, by)
