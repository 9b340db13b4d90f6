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
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from apem.config import Config, load_config
from apem.maps import from_storage, to_storage
from apem.profile import step
from apem.seeds import seed_of
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


@torch.no_grad()
def classify_pool(cfg: Config, lm, images, store_root: Path, progress: bool = True) -> pd.DataFrame:
    """The model's answer on every pool image, cached under ``_predictions/``.

    The cache key holds what decides the answers: model, weights, preset, pool, the
    resolved image folder with its file-list fingerprint, and the numeric environment.
    """
    from tqdm import tqdm

    from apem.data import iter_batches
    from apem.store import parquet_bytes, verified, write_checked

    path = prediction_cache(cfg, lm, store_root)
    if verified(path):
        return pd.read_parquet(path)
    ids = images.ids()
    rows = []
    with tqdm(total=len(images), desc="classify pool", unit="img", disable=not progress) as bar:
        for idx, x, y in _timed_batches(iter_batches(images, lm.transform, cfg.method_batch(lm.device, lm.model))):
            with step("classify pool", len(idx)):
                logits = lm.model(x.to(lm.device)).float()
                p = logits.softmax(1)
                conf, pred = p.max(1)
                loss = F.cross_entropy(logits, y.to(lm.device), reduction="none")
            for j, i in enumerate(idx):
                rows.append((i, ids[i], int(y[j]), int(pred[j]), float(conf[j]), float(loss[j])))
            bar.update(len(idx))
    df = pd.DataFrame(rows, columns=["set_position", "image_id", "label", "pred", "confidence", "loss"])
    df["correct"] = df.label == df.pred
    write_checked(path, parquet_bytes(df))
    return df


def prediction_cache(cfg: Config, lm, store_root: Path) -> Path:
    """The file :func:`classify_pool` keeps the pool's predictions in (present or not)."""
    from apem.numerics import NumericEnv

    key_parts = dict(cfg.classification_key(), environment=NumericEnv.current(lm.device).key())
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(store_root) / "_predictions" / f"{cfg.model}-{cfg.preset}-{key}.parquet"


def _timed_batches(batches):
    """Time the decoding of each batch (the iterator's own work) as the step "decode images"."""
    it = iter(batches)
    while True:
        with step("decode images") as h:
            b = next(it, None)
            h.items = 0 if b is None else len(b[0])
        if b is None:
            return
        yield b


def select_images(cfg: Config, preds: pd.DataFrame) -> pd.DataFrame:
    """``n_correct`` correct and ``n_misclassified`` misclassified images, drawn at random (seeded).

    A group's count ``all`` takes every image of the group: the same images as asking for the
    group's size (the draw is a prefix of one seeded permutation per group, in pool order).
    """
    from apem.data import class_name

    rng = np.random.default_rng(cfg.seed)
    parts = []
    for group, mask in (("correct", preds.correct), ("misclassified", ~preds.correct)):
        pool = preds[mask]
        want = cfg.wanted(group, len(pool))
        if want > len(pool):
            raise ValueError(f"asked for {want} {group} images but the pool has only {len(pool)}")
        pick = pool.iloc[np.sort(rng.permutation(len(pool))[:want])].copy()
        pick["group"] = group
        parts.append(pick)
    sel = pd.concat(parts, ignore_index=True)
    if sel.empty:
        raise ValueError(f"no image selected: the pool's groups asked for ({cfg.n_correct} correct, "
                         f"{cfg.n_misclassified} misclassified) are empty")
    n_right = int((sel.group == "correct").sum())
    if cfg.filter_images > n_right:
        raise ValueError(f"filter_images ({cfg.filter_images}) exceeds the {n_right} correctly classified images "
                         "selected: the filter runs on the first correctly classified images")
    sel["label_name"] = [class_name(i) for i in sel.label]
    sel["pred_name"] = [class_name(i) for i in sel.pred]
    return sel


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
    from apem import maps as M
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
            stage = M.stage_maps(A, x, cfg.stages, quantize=cfg.quantize, encoding=cfg.map_encoding)
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
    return list(range(0, n_images, cfg.chunk_size))


def _needs_work(store: Store, cfg: Config) -> bool:
    """True unless every file the configuration needs is present and matches its checksum."""
    if not store.exists() or not store.has("images.parquet") or not store.has("results.parquet"):
        return True
    n_images = len(pd.read_parquet(store.dir / "images.parquet", columns=["image_id"]))
    if any(store.chunk_problem(c) is not None for c in range(len(_chunk_starts(cfg, n_images)))):
        return True
    return bool(cfg.filter_images) and not (store.has("filter.parquet") and store.has("filter_maps.npz"))


def run(cfg: Config, *, progress: bool = True, root: str | Path | None = None, threads: int | None = None,
        wait: bool = True, fail_after_chunks: int | None = None) -> Store:
    """Compute whatever the store of ``cfg`` lacks or holds damaged; return the store.

    ``threads``: torch's CPU thread count for the run (None: the store's recorded count,
    else ``$APEM_THREADS``, else :data:`apem.numerics.DEFAULT_THREADS`). The numeric
    environment is pinned for the run and recorded; resuming under another one raises
    :class:`apem.numerics.EnvironmentMismatch`. One run writes a store at a time
    (``wait``: wait for the other one, else raise :class:`apem.store.StoreError`).
    ``store.computed`` lists the chunks this call computed.
    """
    from apem import numerics
    from apem.models import resolve_device

    store = Store(cfg, root)  # resolves the data folder: a bad one fails here, before anything is created
    store.computed = []
    recorded = store.environment() if store.exists() else None
    with numerics.pinned(numerics.resolve_threads(threads, recorded)):
        env = numerics.NumericEnv.current(resolve_device(cfg.device))
        if recorded is not None:
            numerics.check_compatible(recorded, env, str(store.dir))
        if not _needs_work(store, cfg):
            return store
        lm, images = _load(cfg)  # bad weights or images fail here, before anything is created
        with store.lock(wait=wait):
            try:
                store.open()
                recorded = store.environment()
                if recorded is None:
                    store.set_environment(env)
                else:
                    numerics.check_compatible(recorded, env, str(store.dir))
                _compute(cfg, store, lm, images, env, progress, fail_after_chunks)
            except BaseException:
                store.remove_if_empty()  # a run that failed before its first result leaves no folder
                raise
    return store


def _compute(cfg: Config, store: Store, lm, images, env, progress: bool, fail_after_chunks: int | None) -> None:
    """The locked part of :func:`run`: missing or damaged chunks, the table, the filter."""
    from tqdm import tqdm

    from apem.alloc import tune_malloc
    from apem.data import load_tensors

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
    starts = _chunk_starts(cfg, len(sel))
    todo = [c for c in range(len(starts)) if not store.chunk_ok(c)]
    if todo:
        done = sum(min(cfg.chunk_size, len(sel) - starts[c]) for c in range(len(starts)) if c not in todo)
        # `initial`, not an update: the resumed images would count in the rate and shorten the ETA
        with tqdm(total=len(sel), initial=done, desc=f"APEM {cfg.name}", unit="img", disable=not progress) as bar:
            for c in todo:
                part = sel.iloc[starts[c] : starts[c] + cfg.chunk_size]
                sub = images.subset(part.set_position.to_numpy())
                with step("decode images", len(part)):
                    _, x, _ = load_tensors(sub, lm.transform)
                rows, arrays = compute_chunk(cfg, lm, x, part.reset_index(drop=True), c)
                store.write_chunk(c, rows, arrays, env)
                store.computed.append(c)
                bar.update(len(part))
                if fail_after_chunks is not None and len(store.computed) >= fail_after_chunks:
                    raise _Interrupt(f"stopped after {len(store.computed)} chunk(s) on request")
    if todo or store.trusted("results.parquet") is None:
        for c in range(len(starts)):
            if store.chunk_environment(c).key() != env.key():
                raise StoreError(f"chunk {store.chunk_path(c)} was computed under {store.chunk_environment(c).describe()},"
                                 f" not {env.describe()}: remove it or use a new store")
        table = pd.concat([store.read_rows(c) for c in range(len(starts))], ignore_index=True)
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
            **overrides) -> Results:
    """Run or reuse the configuration ``params`` (+ overrides) and return its results.

    The calling process is left in the store's numeric environment (its CPU thread count,
    TF32 off), so what a chapter computes from the results matches what the runner stored.
    """
    cfg = load_config(params, **overrides)
    store = run(cfg, progress=progress, root=root, threads=threads)
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
