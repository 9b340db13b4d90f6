"""The experiment runner: images -> maps -> epsilons, each number computed once.

``results(cfg)`` is the call every chapter makes: it computes what is missing
(resuming a killed run chunk by chunk) or reuses what the store holds, and
returns a :class:`Results` with the tidy table, the selected images, and the
stored maps.

A configuration is a view of the cells (:mod:`apem.runner.cells`): every image's maps,
epsilons and shuffled epsilons are stored once under what they depend on
(:mod:`apem.runner.keys`), so another configuration that needs the same numbers (more
images, fewer stages, another search over the same maps) reads them instead of
computing them again. Pipeline for one configuration:

1. classify the image pool once (cached per model/preset/data, shared by
   every configuration that uses them) and draw ``n_correct`` correctly classified and
   ``n_misclassified`` misclassified images (a seeded order: :mod:`apem.runner.selection`);
2. look up the cells the selection needs and group the images that miss the same
   cells into chunks (:mod:`apem.runner.plan`);
3. per chunk: loss gradient at the prediction, the missing methods' attributions and
   stage maps, the missing searches (eps-minus / eps-plus, the shuffled baseline) in one
   batched search each (:mod:`apem.runner.compute`); each chunk's cells are written
   atomically as they arrive (:mod:`apem.runner.chunks`; on a Ray cluster,
   :mod:`apem.runner.distributed`);
4. the table is assembled from the cells into the configuration's folder
   (``results.parquet``), and the filter (thesis Algorithm 2) runs if asked for.

The runner's modules import top-down: this module, then :mod:`apem.runner.distributed`,
:mod:`apem.runner.plan`, :mod:`apem.runner.chunks`, :mod:`apem.runner.compute`,
:mod:`apem.runner.cells`, :mod:`apem.runner.keys`, :mod:`apem.runner.selection`.
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

from apem.config import Config, load_config
from apem.maps import from_storage, to_storage
from apem.profile import step
from apem.runner import chunks
from apem.runner.cells import Cells
from apem.runner.compute import check_targets
from apem.runner.keys import cell_keys
from apem.runner.plan import assemble, filter_lack, indexes, plan
from apem.runner.selection import classify_pool, filter_pick, load_inputs, select_images
from apem.store import Store, StoreError


class _Interrupt(RuntimeError):
    """Raised by tests to stop a run after k chunks."""


def _needs_work(store: Store, cfg: Config, env) -> bool:
    """True unless the configuration's table, images and filter are present and intact and its maps are there.

    The maps are checked (every batch of cells they live in, against its manifest): a chapter reads them.
    """
    if not store.exists() or not store.has("images.parquet") or not store.has("results.parquet"):
        return True
    if store.environment() is None:  # its table cannot say under which environment it was assembled: again
        return True
    if cfg.filter_images and not (store.has("filter.parquet") and store.has("filter_maps.npz")):
        return True
    sel = pd.read_parquet(store.dir / "images.parquet")
    if "image_key" not in sel:
        return True
    cells = Cells(store.root)
    for (kind, name), (_, have) in indexes(cfg, cells, env).items():
        if kind == "maps" and any((k, s) not in have for k in sel.image_key for s in cfg.stages):
            return True
    return False


def run(cfg: Config, *, progress: bool = True, root: str | Path | None = None, threads: int | None = None,
        wait: bool = True, fail_after_chunks: int | None = None, ray: str | None = None,
        workers: int | None = None) -> Store:
    """Compute whatever the cells of ``cfg`` lack or hold damaged, assemble its table; return its store.

    ``threads``: torch's CPU thread count for the run (None: the store's recorded count,
    else ``$APEM_THREADS``, else :data:`apem.numerics.DEFAULT_THREADS`). The numeric
    environment is pinned for the run and is part of every cell's key; resuming a
    configuration under another one raises :class:`apem.numerics.EnvironmentMismatch`.
    One run writes a configuration's folder at a time (``wait``: wait for the other one,
    else raise :class:`apem.store.StoreError`). ``ray``: compute the chunks on a Ray cluster
    (``"local"``, ``"auto"``, ``HOST:PORT`` or ``ray://HOST:PORT``;
    :mod:`apem.runner.distributed`) with at most ``workers`` workers; the same cells, the
    same numbers. ``store.computed`` lists the chunks this call computed,
    ``store.chunk_workers`` who computed each, ``store.plan`` what it read and computed.
    """
    from apem import numerics
    from apem.models import resolve_device
    from apem.runner import distributed

    ray = distributed.check_address(ray)  # a malformed address fails before anything is loaded
    store = Store(cfg, root)  # resolves the data folder: a bad one fails here, before anything is created
    store.computed, store.chunk_workers, store.plan = [], {}, None
    recorded = store.environment() if store.exists() else None
    with numerics.pinned(numerics.resolve_threads(threads, recorded)):
        env = numerics.NumericEnv.current(resolve_device(cfg.device))
        if recorded is not None:
            numerics.check_compatible(recorded, env, str(store.dir))
        if not _needs_work(store, cfg, env):
            return store
        with distributed.connected(ray) if ray else contextlib.nullcontext():
            lm, images = load_inputs(cfg)  # bad weights or images fail here, before anything is created
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


def selection(cfg: Config, store: Store, lm, images, progress: bool = True) -> pd.DataFrame:
    """The configuration's images (``images.parquet``), drawn once: the pool is classified if it is not cached."""
    sel = store.read_frame("images.parquet")
    if sel is None or "image_key" not in sel:
        preds = classify_pool(cfg, lm, images, store.root, progress)
        sel = select_images(cfg, preds, images)
        store.write_frame("images.parquet", sel)
    return sel


def _compute(cfg: Config, store: Store, lm, images, env, progress: bool, fail_after_chunks: int | None,
             ray: str | None = None, workers: int | None = None) -> None:
    """The locked part of :func:`run`: the missing cells, the table, the filter."""
    from apem.alloc import tune_malloc

    tune_malloc()  # small-batch CPU forwards run up to ~1.8x faster with buffers kept on the heap (apem.alloc)
    if progress:  # what is left, timed on this machine, to stderr before anything is computed (apem.cost)
        from apem.runner.remaining import announce

        announce(cfg, store, lm, images, env)
    torch.manual_seed(cfg.seed)
    sel = selection(cfg, store, lm, images, progress)
    cells = Cells(store.root)
    cells.sweep()
    pl = store.plan = plan(cfg, cells, sel, env)
    todo = pl.chunks
    if todo:
        parts = cell_keys(cfg, env)
        record = env.record()

        def write(done):
            for b in done.batches:
                cells.write(b.kind, parts[(b.kind, b.method)], b.rows, record, b.arrays)

        if ray:
            from apem.runner import distributed

            source = distributed.compute(cfg, store, images, lm.transform, todo, env, workers, progress)
        else:
            source = chunks.serial(cfg, lm, images, todo)
        chunks.store_all(store, write, len(sel), todo, source, desc=f"APEM {cfg.name}", progress=progress,
                         fail_after_chunks=fail_after_chunks, interrupt=_Interrupt)
    old = store.read_frame("results.parquet")
    table = assemble(cfg, cells, sel, env)
    if old is None or not old.equals(table):
        store.write_frame("results.parquet", table)
    if cfg.filter_images and (todo or store.trusted("filter_maps.npz") is None or store.trusted("filter.parquet") is None):
        with step("filter", cfg.filter_images, absorb=True):
            run_filter(cfg, lm, images, store, env, progress)


def run_filter(cfg: Config, lm, images, store: Store, env, progress: bool = True) -> int:
    """Thesis Algorithm 2 on the first ``filter_images`` correct images, every method and stage.

    Its results are cells (kind ``filter``, :func:`apem.runner.keys.filter_parts`: the search key
    and ``filter_fast_k``), computed for the images that lack them; then the configuration's
    ``filter.parquet`` and ``filter_maps.npz`` are assembled from them. An image's filter does not
    depend on the other images filtered with it: its loss gradient is computed alone, and every
    search pads its model calls to one batch size. Returns the images computed.
    """
    from apem import filtering, metric
    from apem.data import load_tensors
    from apem.metric.clean import loss_gradient
    from apem.runner.compute import image_by_image
    from apem.runner.keys import filter_parts

    pick = filter_pick(cfg, store.read_frame("images.parquet"))
    cells = Cells(store.root)
    have, lack = filter_lack(cfg, cells, pick, env)
    if lack:
        part = pick.iloc[lack].reset_index(drop=True)
        _, x, _ = load_tensors(images.subset(part.set_position.to_numpy()), lm.transform)
        x = x.to(lm.device)
        target = torch.tensor(part.pred.to_numpy().copy(), device=lm.device).long()
        grad, logits = image_by_image(lambda xj, tj: loss_gradient(lm.model, xj, tj)[:2], x, target)
        check_targets(logits, target, part.image_id)
        info = metric.MarginInfo.from_logits(logits, target, loss_grad=grad)
        res = Results(cfg, store)
        record = env.record()
        for name in cfg.methods:
            rows, arrays = [], {}
            for s in cfg.stages:
                m = res.maps(part.image_id, name, s).to(lm.device)
                t0 = time.perf_counter()
                fr = filtering.explanation_filter(lm.model, x, m, target, spec=cfg.search(), grad=grad,
                                                  fast_k=cfg.filter_fast_k, margin_info=info)
                dt = time.perf_counter() - t0
                arrays[f"s{s}"] = to_storage(fr.maps.detach().cpu(), cfg.quantize)
                for j, (iid, key) in enumerate(zip(part.image_id, part.image_key)):
                    rows.append(dict(image_key=key, stage=s, image_id=iid, row=j,
                                     apem_before=float(fr.apem_before[j]), apem_after=float(fr.apem_after[j]),
                                     steps=int(fr.steps[j]), removed_fraction=float(fr.removed_fraction[j]),
                                     seconds=dt / len(part)))
            cells.write("filter", filter_parts(cfg, name, env), pd.DataFrame(rows), record, arrays)
        have = filter_lack(cfg, cells, pick, env)[0]
    rows, arrays = [], {}
    for name in cfg.methods:
        for s in cfg.stages:
            maps = []
            for j, (iid, key) in enumerate(zip(pick.image_id, pick.image_key)):
                e = have[name][(key, s)]
                r = cells.rows(e.batch).iloc[e.row]
                maps.append(cells.maps(e.batch)[f"s{s}"][int(r.row)])
                rows.append(dict(image_id=iid, method=name, stage=s, map_row=j, apem_before=float(r.apem_before),
                                 apem_after=float(r.apem_after), steps=int(r.steps),
                                 removed_fraction=float(r.removed_fraction), seconds=float(r.seconds)))
            arrays[f"{name}__s{s}"] = np.stack(maps)
    store.write_arrays("filter_maps.npz", arrays)
    store.write_frame("filter.parquet", pd.DataFrame(rows))  # last: its presence says the filter is complete
    return len(lack)


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
        return load_inputs(self.cfg)

    @cached_property
    def cells(self) -> Cells:
        """The cell store the table's maps live in."""
        return Cells(self.store.root)

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

    def map(self, image_id: str, method: str, stage: int) -> torch.Tensor:
        """A stored stage map (C, H, W) in [0, 1]."""
        return self.maps([image_id], method, stage)[0]

    @cached_property
    def _map_index(self) -> dict:
        """``method -> {(image_key, stage): Entry}``: where the configuration's maps live in the cells."""
        from apem.numerics import NumericEnv

        env = self.store.environment()
        if env is None:
            raise StoreError(f"{self.store.dir} records no numeric environment (environment.json missing or damaged): "
                             "run `apem run` on this configuration again")
        return {name: have for (kind, name), (_, have) in indexes(self.cfg, self.cells, env, verify=False).items()
                if kind == "maps"}

    def map_location(self, image_id: str, method: str, stage: int):
        """Where a map lives: an :class:`apem.runner.cells.Entry` (its batch folder under ``cells/``, its row)."""
        keys = self.images.set_index("image_id").image_key
        have = self._map_index.get(method)
        entry = None if have is None or image_id not in keys.index else have.get((keys[image_id], int(stage)))
        if entry is None:
            raise KeyError(f"no map for image {image_id!r}, method {method!r}, stage {stage}")
        return entry

    def maps(self, image_ids, method: str, stage: int) -> torch.Tensor:
        """The stored stage maps (N, C, H, W) in [0, 1] of ``image_ids``, in that order (each batch read once)."""
        out = []
        for iid in image_ids:
            entry = self.map_location(iid, method, stage)
            row = int(self.cells.rows(entry.batch).row.iat[entry.row])
            out.append(from_storage(self.cells.maps(entry.batch)[f"s{int(stage)}"][row]))
        return torch.stack(out)

    def attributions(self, image_ids, method: str) -> torch.Tensor:
        """Method ``method``'s raw attributions (N, 3, H, W), float32, of ``image_ids``, in that order.

        As the run computed them before the visualisation stages
        (:func:`apem.runner.compute.attributions`: image by image, seeded per image, so the same
        numbers whichever images are asked for together). Kept as cells (kind ``attributions``,
        :func:`apem.runner.keys.attribution_parts`) the first time an image is asked for, so the
        chapters that redo a map's later steps (chapter 4's encodings and stage orders) run a
        method such as SmoothGrad once per image, not once per study or re-execution.
        """
        from apem.runner.compute import attributions
        from apem.runner.keys import attribution_parts

        ids = [str(i) for i in image_ids]
        env = self.store.environment()
        if env is None:
            raise StoreError(f"{self.store.dir} records no numeric environment: run `apem run` on it again")
        if method not in self.cfg.methods:
            raise KeyError(f"method {method!r} is not in the configuration (it has {list(self.cfg.methods)})")
        parts = attribution_parts(self.cfg, method, env)
        facts = self.images.set_index("image_id")
        unknown = [i for i in ids if i not in facts.index]
        if unknown:
            raise KeyError(f"image(s) {unknown[:3]} are not among the configuration's images")
        keys = facts.image_key
        have = self.cells.index("attributions", parts)
        lack = list(dict.fromkeys(i for i in ids if (keys[i], 0) not in have))
        if lack:
            lm = self.model
            x = self.image_tensors(lack).to(lm.device)
            if lm.device.type == "cpu":  # as the runner feeds the model: the same kernels, the same numbers
                x = x.contiguous(memory_format=torch.channels_last)
            target = torch.tensor(facts.loc[lack, "pred"].to_numpy().copy(), device=lm.device).long()
            with self.store.pinned():
                a = attributions(self.cfg, lm, method, x, target, lack).detach().float().cpu()
            rows = pd.DataFrame({"image_key": [keys[i] for i in lack], "stage": 0, "image_id": lack,
                                 "row": np.arange(len(lack))})
            self.cells.write("attributions", parts, rows, env.record(), {"a": a.contiguous().numpy()})
            have = self.cells.index("attributions", parts)
        out = []
        for i in ids:
            e = have[(keys[i], 0)]
            out.append(torch.from_numpy(self.cells.maps(e.batch)["a"][int(self.cells.rows(e.batch).row.iat[e.row])]))
        return torch.stack(out)

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
